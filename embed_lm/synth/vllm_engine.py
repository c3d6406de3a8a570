"""`generator=vllm`: vLLM's offline engine on local GPUs, no server: every prompt of a chunk goes to `LLM.chat` at
once and vLLM schedules them with continuous batching (and prefix caching of the shared prompt text).

    pip install vllm                      # not a dependency of embed_lm: CPU installs never need it
    python -m embed_lm.synth generator=vllm model=/models/Qwen2.5-7B-Instruct n_examples=100000
    python -m embed_lm.synth generator=vllm model=/models/Mistral-7B-Instruct-v0.3 generator.tensor_parallel_size=2

`chunk_size` prompts are submitted per `chat` call (default 4096): big enough to keep the engine's batch full, small
enough that a crash loses little (each chunk's answers are written as it returns). The answer schema (schemas.py)
goes in as structured (guided) JSON decoding when `structured_output` is true. Completion tokens and finish
reasons come from the engine's RequestOutput. Tested here only against a test double of `vllm.LLM` (no GPU).
"""

from __future__ import annotations

from embed_lm.errors import ConfigError
from embed_lm.synth.generators import Completion, GeneratorError


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise GeneratorError("generator=vllm needs the vllm package, which embed_lm does not install: `pip install "
                             "vllm` on a GPU machine, or use generator=hf_local (transformers) or generator=openai "
                             f"against a running server ({e})") from None
    return vllm


def guided_json(vllm, schema: dict) -> dict:
    """SamplingParams keyword for JSON-schema decoding: `structured_outputs` (vLLM >= 0.10.2) or `guided_decoding`."""
    from vllm import sampling_params as sp

    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(json=schema)}
    return {"guided_decoding": sp.GuidedDecodingParams(json=schema)}


class VLLMGenerator:
    def __init__(self, model: str, temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 2048,
                 chunk_size: int = 4096, structured_output: bool = True, seed: int = 0, dtype: str = "auto",
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None) -> None:
        if chunk_size < 1:
            raise ConfigError(f"generator.chunk_size must be >= 1, got {chunk_size}")
        self._vllm = import_vllm()
        self.model, self.chunk_size, self.structured_output = model, chunk_size, structured_output
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.seed = seed  # the engine's: one sampling stream for the whole run
        self.llm = self._vllm.LLM(model=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                                  gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                                  seed=seed)

    def describe(self) -> dict:
        return {"generator": "vllm", "model": self.model, "chunk_size": self.chunk_size,
                "structured_output": self.structured_output, "seed": self.seed, **self.sampling}

    def _params(self, response_format: dict | None):
        extra = {}
        if self.structured_output and response_format:
            extra = guided_json(self._vllm, response_format["json_schema"]["schema"])
        return self._vllm.SamplingParams(**self.sampling, **extra)

    def generate_batch(self, conversations: list[list[dict[str, str]]],
                       response_formats: list[dict | None] | None = None) -> list[Completion]:
        formats = response_formats or [None] * len(conversations)
        params = [self._params(f) for f in formats]
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)  # in input order
        completions = []
        for out in outputs:
            best = out.outputs[0]
            completions.append(Completion(best.text, len(out.prompt_token_ids or ()), len(best.token_ids), 0,
                                          best.finish_reason))
        return completions

    def __call__(self, messages: list[dict[str, str]]) -> Completion:
        return self.generate_batch([messages])[0]

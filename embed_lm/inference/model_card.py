"""A model card (README.md with Hugging Face metadata) for an exported model, and publishing it to the hub.

    python -m embed_lm.export run=outputs/train/runs/<run> out=exported/<name> card=true
    python -m embed_lm.export run=<run> out=exported/<name> push_to_hub=<user>/<name>     # card + upload

The card (huggingface_hub.ModelCard) states the recipe (backbone, LoRA, loss, batch, optimiser, data, pooling,
instruction style), the instruction format with copy-paste usage for sentence-transformers and transformers, the
run's scores (every <run>/eval/<suite>/scores.json) with the command that produced them, and the resolved config.
Metadata: library_name sentence-transformers, pipeline_tag sentence-similarity, base_model (a hub id, not a local
path or a random-init tiny model), datasets (hub ids of the training sources), tags, and the MTEB scores
(suite mteb_en) as model-index. Publishing is huggingface_hub's create_repo + upload_folder of the export folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from embed_lm.errors import UserError, one_line

# what an upload raises when the hub cannot be used: the HTTP client's errors (network, HTTP status) and OSError
# (HF_HUB_OFFLINE, no token, a file that cannot be read); the two bases of HfHubHTTPError
UPLOAD_ERRORS = HfHubHTTPError.__bases__

HUB_DATASETS = {"synthetic_msmarco": ["microsoft/ms_marco"], "msmarco_only": ["microsoft/ms_marco"]}  # data option
# -> hub datasets it trains on (the synthetic part is generated locally: python -m embed_lm.synth; data=sample is the
# bundled Debian sample, on no hub)
IGNORE = [".cache/**", "*.tmp", "*.partial"]  # never uploaded (plus .git/, which upload_folder always skips)
POOLING_CODE = {
    "last_token": "emb = out.last_hidden_state[torch.arange(len(ids)), mask.sum(1) - 1]  # the EOS (right padding)",
    "mean": "emb = (out.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)",
    "weighted_mean": "w = mask * mask.cumsum(1)  # position-weighted mean\n"
                     "emb = (out.last_hidden_state * w[..., None]).sum(1) / w.sum(1, keepdim=True)",
}


def hub_id(name: str | None) -> str | None:
    """`owner/name` when it reads as a hub id (not a path), else None."""
    if not name or name.startswith(("/", ".", "~")) or name.count("/") != 1 or Path(name).exists():
        return None
    return name


def read_scores(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("eval/*/scores.json"))]


def card_data(cfg: dict, scores: list[dict], model_name: str) -> ModelCardData:
    backbone = cfg["backbone"]
    base = hub_id(backbone.get("model_name_or_path")) if backbone.get("size", "full") == "full" else None
    datasets = HUB_DATASETS.get((cfg.get("data") or {}).get("name"), [])
    results = [EvalResult(task_type=t["task_type"], dataset_type=f"mteb/{t['task']}", dataset_name=f"MTEB {t['task']}",
                          metric_type=t["main_score"], metric_value=round(t["score"], 2), task_name=t["task_type"])
               for report in scores if report.get("suite") == "mteb_en" for t in report["tasks"]]
    return ModelCardData(library_name="sentence-transformers", pipeline_tag="sentence-similarity", base_model=base,
                         datasets=datasets or None, language=["en"], model_name=model_name,
                         tags=["sentence-transformers", "embed_lm", "e5-mistral-recipe", "lora",
                               f"pooling-{cfg['pooling']['name']}"], eval_results=results or None)


def recipe(cfg: dict) -> str:
    d, t, o = cfg["data"], cfg["trainer"], cfg["optimizer"]
    devices = t.get("devices")
    return "\n".join([
        f"- backbone: `{cfg['backbone']['name']}` ({cfg['backbone'].get('model_name_or_path')}, size "
        f"{cfg['backbone'].get('size', 'full')})",
        f"- LoRA r={cfg['lora_rank']['r']}, alpha={cfg['lora']['alpha']}, dropout={cfg['lora']['dropout']} on "
        f"{', '.join(cfg['backbone'].get('lora_target_modules', []))}; merged into the weights",
        f"- loss: InfoNCE (temperature {cfg['loss'].get('temperature')}), in-batch + "
        f"{d.get('negatives_per_query')} hard negative(s) per query"
        + (f", cached (GradCache) in chunks of {cfg['loss']['mini_batch_size']}"
           if cfg["loss"].get("mini_batch_size") else ""),
        f"- batch: {d.get('batch_size')} queries per device x {devices} device(s); max length {d.get('max_length')}",
        f"- optimiser: AdamW lr {o['lr']}, weight decay {o['weight_decay']}, {o['warmup_steps']} warmup steps, "
        f"linear decay; max steps {t.get('max_steps')}, epochs {t.get('max_epochs')}",
        f"- data: `{d.get('name')}` (sources: {', '.join(d.get('sources') or {}) or 'n/a'})",
        f"- pooling: `{cfg['pooling']['name']}`; instruction style: "
        f"`{cfg['instruction_style']['_target_'].rsplit('.', 1)[-1]}`",
        f"- gradient checkpointing: {cfg.get('gradient_checkpointing')}; seed {cfg.get('seed')}"])


def usage(repo: str, prompts: dict[str, str], pooling: str, max_length: int) -> str:
    return f'''```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{repo}")
queries = model.encode(["how do cats purr"], prompt_name="query")  # prompt: {prompts["query"]!r}
documents = model.encode(["Cats purr by vibrating their laryngeal muscles ..."])  # documents: no prompt
print(model.similarity(queries, documents))
```

```python
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo}")  # appends EOS to every text where the recipe needs it
model = AutoModel.from_pretrained("{repo}").eval()
texts = [{prompts["query"]!r} + "how do cats purr", "Cats purr by vibrating their laryngeal muscles ..."]
batch = tokenizer(texts, padding=True, truncation=True, max_length={max_length}, return_tensors="pt")
ids, mask = batch["input_ids"], batch["attention_mask"]
with torch.no_grad():
    out = model(**batch)
{POOLING_CODE.get(pooling, "# pooling: " + pooling)}
emb = F.normalize(emb, dim=-1)
print(emb[0] @ emb[1])
```'''


def scores_section(scores: list[dict]) -> str:
    if not scores:
        return "No evaluation in the run folder (run `python -m embed_lm.evaluate run=<run> eval=mteb_en`)."
    parts = []
    for r in scores:
        rows = "\n".join(f"| {t['task']} | {t['task_type']} | {t['main_score']} | {t['score']:.2f} |"
                         for t in r["tasks"])
        avg = "n/a" if r.get("avg") is None else f"{r['avg']:.2f}"
        parts.append(f"Suite `{r['suite']}`: average {avg} over {r.get('n_tasks', len(r['tasks']))} task(s) "
                     f"(x100). Command: `{r.get('command', 'n/a')}`\n\n| task | type | main score | score |\n"
                     f"|---|---|---|---|\n{rows}")
    return "\n\n".join(parts)


def build_card(cfg: dict, prompts: dict[str, str], scores: list[dict], repo: str, train_command: str | None
               ) -> ModelCard:
    data = card_data(cfg, scores, model_name=repo.rsplit("/", 1)[-1])
    body = f"""
# {repo.rsplit("/", 1)[-1]}

A text embedding model trained with embed_lm following the E5-mistral recipe ("Improving
Text Embeddings with Large Language Models", Wang et al., 2024): a decoder (or encoder) backbone, LoRA, and
InfoNCE over in-batch and hard negatives. Embeddings are L2-normalised; compare them by cosine similarity.

## Instruction format

Queries carry the task instruction, documents none:

- query prompt: `{prompts["query"]!r}` + the query
- document prompt: `{prompts["document"]!r}` + the document

Another task: replace the instruction, e.g.
`prompt="Instruct: Given a claim, retrieve documents that support it\\nQuery: "`.

## Usage

{usage(repo, prompts, cfg["pooling"]["name"], cfg["data"]["max_length"])}

## Recipe

{recipe(cfg)}

Training command: `{train_command or "n/a (no .hydra/overrides.yaml in the run folder)"}`

## Scores

{scores_section(scores)}

## Configuration

<details><summary>resolved training config</summary>

```yaml
{yaml.safe_dump(cfg, sort_keys=False).strip()}
```
</details>
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")  # no template engine: the body is literal text


def upload_plan(out: Path) -> list[str]:
    """The exact files upload_folder would send (relative paths), with the same ignore patterns."""
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, ignore_patterns=IGNORE + [".git/**"]))


def publish(run: str | Path, out: Path, prompts: dict[str, str], card: bool, repo_id: str | None,
            private: bool = False) -> Path | None:
    """For an export of `run` in `out`: write out/README.md (card=True or repo_id given), then upload `out` to
    repo_id (if given). Returns the card's path."""
    from omegaconf import OmegaConf

    from embed_lm.inference.runs import find_embedder_dir

    written = None
    if card or repo_id:
        embedder_dir, _ = find_embedder_dir(run)
        run_dir = embedder_dir.parent if embedder_dir.name == "embedder" else embedder_dir
        cfg = OmegaConf.to_container(OmegaConf.load(embedder_dir / "config.yaml"), resolve=True)
        overrides = run_dir / ".hydra" / "overrides.yaml"
        command = ("python -m embed_lm.train " + " ".join(yaml.safe_load(overrides.read_text()) or [])
                   if overrides.is_file() else None)
        written = out / "README.md"
        build_card(cfg, prompts, read_scores(run_dir), repo_id or out.name, command).save(written)
    if repo_id:
        api = HfApi()
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="model", ignore_patterns=IGNORE,
                              commit_message="Upload embed_lm export")
        except UPLOAD_ERRORS as e:  # offline, unreachable, not logged in, refused: the local export is complete
            raise UserError(f"--push-to-hub {repo_id}: the upload failed ({type(e).__name__}: {one_line(e)}); the "
                            f"export in {out} is complete: upload it later with `huggingface-cli upload {repo_id} "
                            f"{out}` (online: unset HF_HUB_OFFLINE; log in with `huggingface-cli login`)") from e
    return written

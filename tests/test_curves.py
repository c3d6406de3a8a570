"""Training curves: a tiny training run writes csv/curves.png whose panels hold the run's own metrics.csv series,
and `python -m embed_lm.report runs` draws two runs on the same axes (checked on the drawn data, not pixels)."""

import csv

import matplotlib.image
import pytest

from conftest import compose_train
from embed_lm.training.curves import PANELS, plot_runs, read_curves
from embed_lm.report import main as report_main
from embed_lm.report import runs
from embed_lm.train import train


def series(path, prefix):
    """(steps, values) of the first column starting with `prefix`, straight from the csv (the reference)."""
    steps, values = [], []
    for row in csv.DictReader(path.open()):
        col = next((c for c in row if c.startswith(prefix) and row[c] != ""), None)
        if col:
            steps.append(int(row["step"]))
            values.append(float(row[col]))
    return steps, values


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("curves_run")
    train(compose_train(["backbone=tiny_mistral", "data=sample", "debug=smoke", "logger=csv", "trainer.max_steps=-1",
                         "trainer.limit_train_batches=3", "test_after_training=false"], out))
    return out


def test_training_writes_curves_png_with_its_metrics(run, tmp_path):
    png = run / "csv" / "curves.png"
    assert matplotlib.image.imread(png).ndim == 3  # a readable PNG
    metrics = run / "csv" / "metrics.csv"
    drawn = plot_runs({"run": read_curves(run)}, tmp_path / "again.png")  # what write_run_curves drew
    assert set(drawn) == set(PANELS) == {"train loss", "learning rate", "validation nDCG@10"}
    for panel, prefix in (("train loss", "train/loss"), ("learning rate", "lr-"), ("validation nDCG@10", "val/ndcg")):
        steps, values = series(metrics, prefix)
        assert steps, f"{prefix} not logged by the run"
        assert drawn[panel]["run"][0] == steps
        assert drawn[panel]["run"][1] == pytest.approx(values)


def test_report_runs_draws_two_runs_on_the_same_axes(run, tmp_path):
    other = tmp_path / "other_run"
    (other / "csv").mkdir(parents=True)
    (other / "csv" / "metrics.csv").write_text("epoch,lr-AdamW,step,train/loss,val/ndcg@10\n0,0.5,0,,\n"
                                               "0,,0,2.5,\n0,1.0,1,,\n0,,1,2.0,\n0,,1,,0.25\n")
    drawn = runs([run, other], tmp_path / "runs.png")
    assert set(drawn["train loss"]) == {run.name, "other_run"}
    assert drawn["train loss"]["other_run"] == ([0, 1], [2.5, 2.0])
    assert drawn["learning rate"]["other_run"] == ([0, 1], [0.5, 1.0])
    assert drawn["validation nDCG@10"]["other_run"] == ([1], [0.25])
    assert drawn["train loss"][run.name][1] == pytest.approx(series(run / "csv" / "metrics.csv", "train/loss")[1])
    report_main(["runs", str(run), str(other), "--out", str(tmp_path / "cli.png")])
    assert matplotlib.image.imread(tmp_path / "cli.png").ndim == 3


def test_report_runs_names_the_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        report_main(["runs", str(tmp_path)])
    assert "csv/metrics.csv" in capsys.readouterr().err

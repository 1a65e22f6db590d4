"""Real `dvc repro` in a temporary copy of the project: what runs, is skipped, lands in MLflow."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.project import DVC, executed, make_project, run, set_param, stage_env

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("project")
    env = stage_env()
    make_project(root, env)
    return root, env, [DVC, "repro"]


def test_data_stages_rerun_exactly_what_changed(project) -> None:
    root, env, dvc = project

    first = run([*dvc, "tokenizer"], root, env)
    assert executed(first.stdout) == {"download", "clean", "tokenizer"}, first.stdout

    started = time.perf_counter()
    second = run([*dvc, "tokenizer"], root, env)
    noop_seconds = time.perf_counter() - started
    assert executed(second.stdout) == set(), second.stdout
    assert noop_seconds < 3.0, f"no-op repro took {noop_seconds:.2f}s"

    set_param(root, "clean.val_fraction", 0.2)
    third = run([*dvc, "tokenizer"], root, env)
    assert executed(third.stdout) == {"clean", "tokenizer"}, third.stdout

    set_param(root, "tokenizer.vocab_size", 1000)
    fourth = run([*dvc, "tokenizer"], root, env)
    assert executed(fourth.stdout) == {"tokenizer"}, fourth.stdout

    # The outputs are real: a loadable tokenizer, counted clean data, metrics for DVC.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "models" / "tokenizer")
    assert len(tokenizer) == 1000
    text = "测试 round trip: 你好, world! 🎉"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    report = json.loads((root / "metrics" / "clean.json").read_text())
    assert report["docs_out"] > 0 and report["records_in"] >= report["records_kept"]
    shown = run([DVC, "metrics", "show", "--json"], root, env)
    assert "bytes_per_token" in shown.stdout and "records_in" in shown.stdout

    check_mlflow(root)


def test_training_stages_rerun_exactly_what_changed(project) -> None:
    root, env, dvc = project
    first = run(dvc, root, env)  # the data half is up to date: only the training half runs
    vision = {"align", "eval_vlm", "export_vlm", "align_omni", "eval_omni", "talker"}
    downstream = {"dpo", "eval", "export"} | vision
    assert executed(first.stdout) == {"tokenize", "features", "pretrain", "sft"} | downstream, \
        first.stdout
    pretrain = json.loads((root / "metrics" / "pretrain.json").read_text())
    sft = json.loads((root / "metrics" / "sft.json").read_text())
    assert pretrain["val_loss"] < pretrain["unigram_entropy"]
    assert sft["val_loss"] < sft["val_loss_before"]
    dpo = json.loads((root / "metrics" / "dpo.json").read_text())
    assert dpo["val_reward_accuracy_before"] == 0.5  # the SFT model is its own reference
    evaluation = json.loads((root / "metrics" / "eval.json").read_text())
    assert set(evaluation["perplexity"]) == {"pretrain", "sft", "dpo"}
    assert "lang/zh" in evaluation["perplexity"]["pretrain"]
    assert evaluation["qa_accuracy"]["sft"]["chance"] == 0.25
    assert 0 <= evaluation["dpo_preference"]["reward_accuracy"] <= 1
    check_vision_outputs(root)
    check_omni_outputs(root)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "trained"], root, env)

    assert executed(run(dvc, root, env).stdout) == set()
    set_param(root, "pretrain.train.lr", 0.002)
    assert executed(run(dvc, root, env).stdout) == {"pretrain", "sft"} | downstream
    set_param(root, "sft.train.lr", 0.0005)
    assert executed(run(dvc, root, env).stdout) == {"sft"} | downstream
    # Encoder params rerun the feature cache and what reads it, nothing upstream (the rest
    # only when the features came out different).
    set_param(root, "features.vision.batch_size", 7)
    rerun = executed(run(dvc, root, env).stdout)
    assert "features" in rerun and rerun <= {"features"} | vision, rerun
    # Finished runs leave one checkpoint folder per stage: the current params' one.
    assert len(list((root / "checkpoints" / "pretrain").iterdir())) == 1
    # DVC compares the new metrics with the committed ones.
    diff = json.loads(run([DVC, "metrics", "diff", "--json"], root, env).stdout)
    assert "metrics/eval.json" in diff and "metrics/sft.json" in diff
    check_registered_model(root)
    check_plots(root, env)


def check_vision_outputs(root: Path) -> None:
    """The vision path ran: cached features, per-type VQA beside chance, a loadable export."""
    features = json.loads((root / "metrics" / "features.json").read_text())["vision"]
    assert features["unique_images"] == features["images"] > 0
    assert (features["num_tokens"], features["feature_dim"]) == (49, 1360)
    align = json.loads((root / "metrics" / "align.json").read_text())
    assert align["phase1"]["llm_unchanged"] is True
    assert align["phase2"]["val_loss"] < align["phase2"]["val_loss_before"]
    vqa = json.loads((root / "metrics" / "eval_vlm.json").read_text())
    assert {"colour", "shape", "count", "position"} <= set(vqa)
    assert all(0 < vqa[kind]["chance"] < 1 for kind in ("colour", "shape", "count", "position"))
    exported = json.loads((root / "metrics" / "export_vlm.json").read_text())
    assert exported["max_logit_diff"] <= 1e-5
    assert (root / "models" / "export-vlm" / "encoder.json").is_file()


def check_omni_outputs(root: Path) -> None:
    """The omni path ran from cached audio features: phase 1 left the VLM bit-identical, and
    the one model was scored on speech (ASR beside its baseline) and on typed questions."""
    features = json.loads((root / "metrics" / "features.json").read_text())["audio"]
    assert features["unique_clips"] > 0 and features["feature_dim"] == 320
    align = json.loads((root / "metrics" / "align_omni.json").read_text())
    assert align["phase1"]["vlm_unchanged"] is True and align["phase1"]["audios"] > 0
    assert align["phase2"]["val_loss"] < align["phase2"]["val_loss_before"]
    scores = json.loads((root / "metrics" / "eval_omni.json").read_text())
    assert scores["records"] > 0 and scores["text_vqa"]
    if "asr" in scores:
        assert 0 <= scores["asr"]["baseline"]["cer"] <= 1 and scores["asr"]["cer"] >= 0
    samples = json.loads((root / "metrics" / "omni_samples.json").read_text())
    assert samples and all("reply" in s for pairs in samples.values() for s in pairs)
    talker = json.loads((root / "metrics" / "talker.json").read_text())
    assert set(talker["wer"]) == {"tts", "codec", "talker", "codec_gap"}
    assert talker["talker"]["pairs"] > 0 and talker["held_out_answers"] > 0
    from minimind.model.talker import load_talker

    loaded, codec = load_talker(root / "models" / "talker")
    assert loaded.config.num_quantizers == codec.num_quantizers


def check_plots(root: Path, env: dict[str, str]) -> None:
    """Training curves are DVC plots, and the HTML view works offline (no CDN script)."""
    shown = run([DVC, "plots", "show", "--json"], root, env).stdout
    for stage in ("pretrain", "sft", "dpo"):
        assert f"plots/{stage}/train.json" in shown
        curve = json.loads((root / "plots" / stage / "train.json").read_text())
        assert [row["step"] for row in curve] == sorted(row["step"] for row in curve)
    run([sys.executable, "-m", "pipelines.plots", "--out", "plots.html"], root, env)
    page = (root / "plots.html" / "index.html").read_text(encoding="utf-8")
    assert "vegaEmbed(" in page and "<script src=" not in page and "cdn.jsdelivr" not in page


def check_registered_model(root: Path) -> None:
    """Each export registered a new version with lineage tags; the latest loads and generates."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    versions = client.search_model_versions("name = 'minimind-text'")
    assert len(versions) == 3
    latest = max(versions, key=lambda v: int(v.version))
    assert latest.tags["git.commit"] != "unknown"
    assert latest.tags["dvc.sft.models/sft"] and latest.tags["params.hash"]
    exported = json.loads((root / "metrics" / "export.json").read_text())
    assert exported["registered_version"] == int(latest.version)
    assert exported["hf_max_logit_diff"] <= 1e-4
    mlflow.set_tracking_uri(uri)
    reply = mlflow.pyfunc.load_model(f"models:/minimind-text/{latest.version}").predict(
        ["Hello there"])
    assert isinstance(reply, list) and len(reply) == 1 and isinstance(reply[0], str)


def check_mlflow(root: Path) -> None:
    """Six stage runs (3 + 2 + 1), each with its params, metrics and parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("minimind-pipeline")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    stage_runs = [r for r in runs if "stage" in r.data.tags]
    assert [r.data.tags["stage"] for r in stage_runs] == [
        "download", "clean", "tokenizer", "clean", "tokenizer", "tokenizer"]
    for r in stage_runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"]
        assert r.data.tags["git.commit"] != "unknown"
        assert r.data.metrics["stage_seconds"] > 0
        assert any(k.startswith("dvc.dep.") for k in r.data.tags)
    download, clean, tokenizer, clean2, tokenizer2, tokenizer3 = stage_runs
    assert "download.retries" in download.data.params
    assert "data.sources.0.uri" in download.data.params
    assert clean.data.params["clean.val_fraction"] == "0.1"
    assert clean2.data.params["clean.val_fraction"] == "0.2"
    assert tokenizer3.data.params["tokenizer.vocab_size"] == "1000"
    assert clean.data.metrics["records_in"] > 0
    assert tokenizer.data.metrics["vocab_size"] == 1200
    # One parent per pipeline version (git commit + params): three versions, three parents.
    parents = [r.data.tags["mlflow.parentRunId"] for r in stage_runs]
    assert parents[0] == parents[1] == parents[2] != parents[3]
    assert parents[3] == parents[4] != parents[5]
    for parent_id in set(parents):
        assert client.get_run(parent_id).data.tags["pipeline.role"] == "parent"
    # Outputs point back at their run.
    info = json.loads((root / "data" / "clean" / "mlflow_run.json").read_text())
    assert info["run_id"] == clean2.info.run_id
    info = json.loads((root / "models" / "tokenizer" / "mlflow_run.json").read_text())
    assert info["run_id"] == tokenizer3.info.run_id

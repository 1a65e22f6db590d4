"""eval: every trained text model measured on held-out data.

- perplexity of pretrain, sft and dpo models on held-out pretrain text, per source corpus and
  per language;
- multiple-choice QA accuracy (the held-out conversations of the sft sources `eval.qa_sources`,
  whose last assistant turn is the answer, among `eval.choices` candidates drawn from the
  other questions' answers) beside its chance level; none when `eval.qa_sources` is empty;
- DPO preference accuracy on held-out pairs (the DPO model's implicit reward, with the SFT model
  as reference);
- sample replies of the chat models, saved as metrics/eval_samples.json and logged to MLflow.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pipelines.stage import StageContext, run_stage

CLEAN_DIR = Path("data/clean")
DPO_TOKENS = Path("data/tokens/dpo/val")
MODELS = {"pretrain": Path("models/pretrain"), "sft": Path("models/sft"),
          "dpo": Path("models/dpo")}
METRICS = Path("metrics/eval.json")
SAMPLES = Path("metrics/eval_samples.json")


def held_out_text(clean_dir: Path, per_group: int) -> dict[str, list[str]]:
    """Held-out pretrain documents grouped as `source/<name>` and `lang/<code>`, each group
    `per_group` documents spread evenly over it (stored order groups sources together, so the
    first documents of a language would all come from one corpus)."""
    from minimind.data.shards import iter_rows, shard_paths

    groups: dict[str, list[str]] = defaultdict(list)
    for row in iter_rows(shard_paths(clean_dir / "pretrain", "val"), ["text", "source", "lang"]):
        for key in (f"source/{row['source']}", f"lang/{row['lang']}"):
            groups[key].append(row["text"])
    from minimind.evaluation import spread

    return {key: spread(docs, per_group) for key, docs in groups.items()}


def held_out_questions(clean_dir: Path, sources: list[str], limit: int
                       ) -> list[tuple[list[dict], str]]:
    """(prompt, answer) of the held-out conversations of `sources` that end in an answer."""
    from minimind.data.shards import iter_rows, shard_paths

    questions = []
    for row in iter_rows(shard_paths(clean_dir / "sft", "val"), ["conversations", "source"]):
        messages = json.loads(row["conversations"])
        if row["source"] in sources and messages[-1]["role"] == "assistant":
            questions.append((messages[:-1], messages[-1]["content"]))
        if len(questions) == limit:
            break
    return questions


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import minimind.model  # noqa: F401 - registers MiniMind with the Auto classes
    from minimind.data.dpo_tokens import DPODataset
    from minimind.dpo import preference_accuracy, reference_logps
    from minimind.evaluation import multiple_choice_accuracy, perplexity, text_loss
    from minimind.generation import chat_reply
    from pipelines.atomic import write_json

    opts = ctx.params.eval
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(MODELS["sft"]))
    models = {name: AutoModelForCausalLM.from_pretrained(ctx.path(path), dtype=torch.float32)
              .eval() for name, path in MODELS.items()}
    texts = held_out_text(ctx.path(CLEAN_DIR), opts.docs_per_group)
    questions = held_out_questions(ctx.path(CLEAN_DIR), opts.qa_sources, opts.questions)
    if opts.qa_sources and len(questions) < opts.choices:
        raise ValueError(f"eval.qa_sources {opts.qa_sources}: {len(questions)} held-out "
                         f"questions, fewer than eval.choices ({opts.choices})")
    metrics: dict = {"perplexity": {}, "qa_accuracy": {}}
    for name, model in models.items():
        metrics["perplexity"][name] = {
            group: round(perplexity(*text_loss(model, tokenizer, docs, opts.max_tokens)), 3)
            for group, docs in sorted(texts.items())}
        print(f"[eval] {name}: perplexity {metrics['perplexity'][name]}", flush=True)
        if not questions:
            continue
        metrics["qa_accuracy"][name] = multiple_choice_accuracy(
            model, tokenizer, questions, opts.choices, opts.seed)
        print(f"[eval] {name}: QA accuracy {metrics['qa_accuracy'][name]['accuracy']:.3f} "
              f"(chance {1 / opts.choices:.3f})", flush=True)
    pairs = DPODataset(ctx.path(DPO_TOKENS))
    reference = reference_logps(models["sft"], pairs, opts.batch_size)
    metrics["dpo_preference"] = preference_accuracy(models["dpo"], reference, pairs,
                                                    opts.batch_size, ctx.params.dpo.beta)
    samples = []
    torch.manual_seed(opts.sampling.seed)
    for prompt, reference_answer in questions[: opts.sampling.prompts]:
        entry = {"prompt": prompt, "reference": reference_answer}
        for name in ("sft", "dpo"):
            reply = chat_reply(models[name], tokenizer, prompt,
                               max_new_tokens=opts.sampling.max_new_tokens,
                               **opts.sampling.generate_kwargs())
            entry[name] = reply.text
        samples.append(entry)
    write_json(ctx.path(SAMPLES), samples)
    ctx.run.log_artifact(ctx.path(SAMPLES))
    ctx.write_metrics(METRICS, metrics)
    print(f"[eval] DPO held-out preference accuracy "
          f"{metrics['dpo_preference']['reward_accuracy']:.3f}; metrics in {METRICS}", flush=True)


if __name__ == "__main__":
    run_stage("eval", main, __doc__)

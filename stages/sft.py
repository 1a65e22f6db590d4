"""sft: supervised fine-tuning of the pretrained model on chat conversations.

Conversations are packed into rows of `sft.seq_len` with attention that never crosses a
conversation boundary; only assistant tokens carry loss. Optional LoRA (`sft.lora`) trains
adapters on a frozen base and merges them, so models/sft/ is always a plain model.
metrics/sft.json: held-out assistant-token loss before and after, and how sampled replies
end; the samples themselves are logged to MLflow.

With `sft.init_from` (e.g. upstream MiniMind's full_sft_768.pth), fine-tuning starts from those
weights instead of models/pretrain's; the architecture (config.json) and tokenizer still come
from models/pretrain, and metrics/sft.json records the weights' source and sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.stage import StageContext, run_stage

TOKENS_DIR = Path("data/tokens/sft")
CLEAN_DIR = Path("data/clean/sft")
BASE_DIR = Path("models/pretrain")
MODEL_DIR = Path("models/sft")
METRICS = Path("metrics/sft.json")
SAMPLES = Path("metrics/sft_samples.json")


def held_out_prompts(clean_dir: Path, count: int) -> list[list[dict]]:
    """The first held-out conversations, cut before their final assistant turn."""
    from minimind.data.shards import iter_rows, shard_paths

    prompts = []
    for row in iter_rows(shard_paths(clean_dir, "val"), ["conversations"]):
        messages = json.loads(row["conversations"])
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(messages[: last + 1])
        if len(prompts) == count:
            break
    return prompts


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import minimind.model  # noqa: F401 - registers MiniMind with the Auto classes
    from minimind.data.batches import BatchStream
    from minimind.data.sft_tokens import PackedSFTDataset, SFTDataset
    from minimind.generation import chat_reply
    from minimind.lora import apply_lora, merge_lora
    from minimind.training import Trainer, cleanup_distributed, init_distributed
    from minimind.training.evaluate import mean_token_loss
    from pipelines.init_weights import init_from_weights
    from pipelines.plots import CurveRecorder, finish_curves
    from pipelines.training import prune_checkpoints, save_model

    opts = ctx.params.sft
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(BASE_DIR))
    init = None
    if opts.init_from is None:
        model = AutoModelForCausalLM.from_pretrained(ctx.path(BASE_DIR), dtype=torch.float32)
        rank, world_size, _ = init_distributed()
    else:  # models/pretrain's architecture, the weights from init_from
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ctx.path(BASE_DIR)),
                                                 dtype=torch.float32)
        rank, world_size, _ = init_distributed()
        init = init_from_weights(model, opts.init_from, ctx.root, "sft.init_from")
        ctx.run.set_tags({"init_from.source": init["source"], "init_from.sha256": init["sha256"]})
        if rank == 0:
            print(f"[sft] starting from {opts.init_from} (sha256 {init['sha256'][:12]}) instead "
                  f"of {BASE_DIR}", flush=True)
    train_rows = PackedSFTDataset(SFTDataset(ctx.path(TOKENS_DIR / "train")), opts.seq_len)
    val_rows = PackedSFTDataset(SFTDataset(ctx.path(TOKENS_DIR / "val")), opts.seq_len)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return {"val_loss": mean_token_loss(m, val_rows, opts.train.micro_batch_size,
                                            opts.eval_rows)}

    before = evaluate(model)["val_loss"] if rank == 0 else float("nan")
    torch.manual_seed(opts.train.seed)  # LoRA adapter initialisation
    if opts.lora.enabled:
        wrapped = apply_lora(model, opts.lora)
        if rank == 0:
            print(f"[sft] LoRA rank {opts.lora.rank} on {len(wrapped)} layers", flush=True)
    if rank == 0:
        print(f"[sft] {len(train_rows):,} packed rows of {opts.seq_len} tokens, "
              f"{train_rows.useful_token_share:.1%} useful tokens; held-out assistant loss "
              f"before: {before:.4f}", flush=True)
    batches = BatchStream(train_rows, opts.train.micro_batch_size, seed=opts.train.seed,
                          rank=rank, world_size=world_size)
    curve = CurveRecorder(ctx.run.log_metrics, ctx.checkpoint_dir())
    if rank == 0:
        curve({"val_loss": before}, 0)  # the held-out curve starts at the pretrained model
    trainer = Trainer(model, opts.train, batches, ctx.checkpoint_dir(),
                      log_metrics=curve, evaluate=evaluate, forward_kwargs={"loss_only": True})
    final = trainer.fit()
    if rank == 0:
        model = trainer.raw_model
        if opts.lora.enabled:
            merge_lora(model)
        save_model(model, tokenizer, ctx.path(MODEL_DIR))
        samples = []
        torch.manual_seed(opts.sampling.seed)
        for messages in held_out_prompts(ctx.path(CLEAN_DIR), opts.sampling.prompts):
            reply = chat_reply(model, tokenizer, messages[:-1],
                               max_new_tokens=opts.sampling.max_new_tokens,
                               **opts.sampling.generate_kwargs())
            samples.append({"prompt": messages[:-1], "reference": messages[-1]["content"],
                            "reply": reply.text, "stopped_at_im_end": reply.stopped})
        metrics = {
            "val_loss_before": round(before, 4),
            "val_loss": round(final["val_loss"], 4),
            "train_loss": round(final["loss"], 4),
            "useful_token_share": round(train_rows.useful_token_share, 4),
            "samples_stopped_frac": round(
                sum(s["stopped_at_im_end"] for s in samples) / max(len(samples), 1), 4),
        }
        if init is not None:
            metrics["init_from"] = init
        from pipelines.atomic import write_json

        write_json(ctx.path(SAMPLES), samples)
        ctx.run.log_artifact(ctx.path(SAMPLES))
        ctx.write_metrics(METRICS, metrics)
        finish_curves(ctx, curve, ["loss"], ["val_loss"])
        prune_checkpoints(ctx.checkpoint_dir())
        print(f"[sft] held-out assistant loss {before:.4f} -> {metrics['val_loss']:.4f}; "
              f"{metrics['samples_stopped_frac']:.0%} of sampled replies ended with <|im_end|>; "
              f"model saved to {MODEL_DIR}", flush=True)
    cleanup_distributed()


if __name__ == "__main__":
    run_stage("sft", main, __doc__, processes=lambda params: params.sft.nproc)

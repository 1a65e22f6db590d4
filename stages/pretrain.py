"""pretrain: train MiniMind from scratch as a causal LM on the packed token shards.

With `pretrain.init_from`, training starts from existing weights instead (e.g. upstream
MiniMind's llm_768.pth, with `tokenizer.pretrained` set to upstream's tokenizer and `model`
to the matching preset); metrics/pretrain.json then records their source and sha256.

Reads data/tokens/pretrain/{train,val} and the tokenizer; writes models/pretrain/ (a Hugging
Face folder: config, safetensors, tokenizer) and metrics/pretrain.json (final train and
held-out loss beside the corpus's unigram entropy). Checkpoints go to
checkpoints/pretrain/<identity>/, so a killed run resumes where it died.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.stage import StageContext, run_stage

TOKENS_DIR = Path("data/tokens/pretrain")
TOKENIZER_DIR = Path("models/tokenizer")
MODEL_DIR = Path("models/pretrain")
METRICS = Path("metrics/pretrain.json")


def main(ctx: StageContext) -> None:
    import torch
    from transformers import AutoTokenizer

    from minimind.data.batches import BatchStream
    from minimind.data.pretrain_tokens import PretrainDataset, unigram_entropy
    from minimind.model import MiniMindForCausalLM
    from minimind.training import Trainer, cleanup_distributed, init_distributed
    from minimind.training.evaluate import mean_token_loss
    from pipelines.init_weights import init_from_weights
    from pipelines.plots import CurveRecorder, finish_curves
    from pipelines.training import flops_per_token, prune_checkpoints, save_model

    opts = ctx.params.pretrain
    tokenizer = AutoTokenizer.from_pretrained(ctx.path(TOKENIZER_DIR))
    config = ctx.params.model.to_config(vocab_size=len(tokenizer))
    torch.manual_seed(opts.train.seed)  # the initial weights are part of the run's identity
    model = MiniMindForCausalLM(config)
    rank, world_size, _ = init_distributed()
    init = None
    if opts.init_from is not None:
        init = init_from_weights(model, opts.init_from, ctx.root, "pretrain.init_from")
        ctx.run.set_tags({"init_from.source": init["source"], "init_from.sha256": init["sha256"]})
        if rank == 0:
            print(f"[pretrain] starting from {opts.init_from} (sha256 {init['sha256'][:12]})",
                  flush=True)
    train_rows = PretrainDataset(ctx.path(TOKENS_DIR / "train"), opts.seq_len)
    val_rows = PretrainDataset(ctx.path(TOKENS_DIR / "val"), opts.seq_len)
    batches = BatchStream(train_rows, opts.train.micro_batch_size, seed=opts.train.seed,
                          rank=rank, world_size=world_size)
    num_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(f"[pretrain] {num_params / 1e6:.2f}M parameters, {len(train_rows):,} train rows "
              f"of {opts.seq_len} tokens, {world_size} process(es)", flush=True)
    curve = CurveRecorder(ctx.run.log_metrics, ctx.checkpoint_dir())
    trainer = Trainer(
        model, opts.train, batches, ctx.checkpoint_dir(),
        log_metrics=curve,
        evaluate=lambda m: {"val_loss": mean_token_loss(m, val_rows, opts.train.micro_batch_size,
                                                        opts.eval_rows)},
        flops_per_token=flops_per_token(num_params, config.num_hidden_layers,
                                        config.hidden_size, opts.seq_len),
    )
    final = trainer.fit()
    if rank == 0:
        save_model(trainer.raw_model, tokenizer, ctx.path(MODEL_DIR))
        metrics = {
            "train_loss": round(final["loss"], 4),
            "val_loss": round(final["val_loss"], 4),
            "unigram_entropy": round(unigram_entropy(ctx.path(TOKENS_DIR / "train")), 4),
            "tokens_per_s": round(final["tokens_per_s"], 1),
            "steps": trainer.config.max_steps,
            "parameters": num_params,
        }
        if init is not None:
            metrics["init_from"] = init
        ctx.write_metrics(METRICS, metrics)
        finish_curves(ctx, curve, ["loss"], ["val_loss"])
        prune_checkpoints(ctx.checkpoint_dir())
        print(f"[pretrain] held-out loss {metrics['val_loss']} nats/token vs unigram entropy "
              f"{metrics['unigram_entropy']}; model saved to {MODEL_DIR}", flush=True)
    cleanup_distributed()


if __name__ == "__main__":
    run_stage("pretrain", main, __doc__, processes=lambda params: params.pretrain.nproc)

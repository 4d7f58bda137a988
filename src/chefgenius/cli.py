"""Thin command-line entry points: parse, build, call. Logic lives in the library."""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from chefgenius.config import ConfigError
from chefgenius.errors import (
    CheckpointFormatError,
    CheckpointWriteError,
    DataError,
    GenerationError,
    ModelLoadError,
    PrepareWriteError,
    ResumeError,
    RunDirError,
)

COVERAGE_STRENGTH = 8.0  # strongest logit bonus tried by --coverage (measured: docs/generation.md)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train recipe-generation models that resume exactly after any stop.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect recipe data.")
ckpt_app = typer.Typer(no_args_is_help=True, help="List, inspect, verify, diff and export checkpoints.")
app.add_typer(data_app, name="data")
app.add_typer(ckpt_app, name="ckpt")


def _fail(msg: str, code: int) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn known user mistakes into one line on stderr and exit code 2 (failed writes: 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, RunDirError, ResumeError, ModelLoadError, GenerationError,
                CheckpointFormatError, FileExistsError) as err:
            _fail(str(err), 2)
        except CheckpointWriteError as err:
            _fail(f"{err.strerror}; earlier checkpoints are intact (free space or fix the path, then rerun "
                  "the same command to resume)", 1)
        except KeyboardInterrupt:
            typer.echo("aborted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # The reader went away (`ckpt inspect ... | head`): not an error. Silence the final flush too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as err:  # full disk, permissions... while writing outputs
            where = f" ({err.filename})" if err.filename else ""
            _fail(f"{err.strerror or err}{where}; fix the cause and rerun the same command", 1)

    return wrapper


@app.command()
@user_errors
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. training.batch_size=16.")] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Run directory.")] = Path("runs/default"),
    resume: Annotated[str, typer.Option(help="auto (newest valid checkpoint), never, or a checkpoint path.")] = "auto",
    allow_change: Annotated[Optional[list[str]], typer.Option("--allow-change",
                            help="Accept a changed config key on resume (repeatable).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    sample: Annotated[bool, typer.Option(help="Print a generated recipe at the end.")] = True,
    report: Annotated[bool, typer.Option(help="Write the run report (plots, HTML) at the end.")] = True,
    nproc: Annotated[Optional[int], typer.Option("--nproc", min=1, help="Processes on this machine: launches "
                     "the same command through torchrun (DDP; gloo on CPU, NCCL on CUDA).")] = None,
    max_restarts: Annotated[int, typer.Option("--max-restarts", min=0, help="With --nproc: restart the "
                            "process group this often after a worker dies (each restart resumes).")] = 0,
) -> None:
    """Train a model; resumes from the newest valid checkpoint in OUTPUT_DIR when there is one."""
    from chefgenius.config import load_config

    overrides = list(set_ or [])
    if device:
        overrides.append(f"training.device={device}")
    cfg = load_config(config, overrides)
    if nproc is not None:
        _check_gpus_for(cfg.training.device, nproc)  # before any process starts
        _launch_torchrun(nproc, max_restarts)
    from chefgenius.runtime import distributed
    from chefgenius.training.trainer import Trainer

    if cfg.data.path and Path(cfg.data.path).exists():
        # Recorded absolute so that eval, report and resume work from any working directory.
        cfg.data.path = str(Path(cfg.data.path).resolve())
    with Trainer(cfg, output_dir, resume=resume, allow_changes=tuple(allow_change or ())) as trainer:
        try:
            result = trainer.fit()
        except OSError as err:
            if isinstance(err, (CheckpointWriteError, PrepareWriteError)):
                raise
            where = f" ({err.filename})" if err.filename else ""
            _fail(f"{err.strerror or err}{where}; checkpoints already committed are intact, fix the cause and "
                  "rerun the same command to resume", 1)
        distributed.shutdown()
        if result.status == "interrupted":
            raise typer.Exit(128 + (result.stop_signal or 2))  # 130 for Ctrl-C, 143 for SIGTERM
        if result.status == "completed" and distributed.is_main():
            typer.echo(f"done: {result.step} steps in {result.seconds:.1f}s; best validation loss "
                       f"{result.best_val_loss:.4f}; final model in {result.final_dir}")
            if report:
                _write_report(output_dir)
            if sample and cfg.evaluation.prompts:
                _print_sample(trainer, result.final_dir)


def _print_sample(trainer: Any, final_dir: Path) -> None:
    """A recipe for the first evaluation prompt from the model just trained: greedy, steered to use
    every requested ingredient (--coverage) and guarded, as a cook would want it."""
    from chefgenius.data.recipe_format import parse_recipe, render_recipe
    from chefgenius.generation.decode import GenerationSettings, generate_texts

    cfg = trainer.cfg
    prompt = cfg.evaluation.prompts[0]
    model = trainer.model
    if trainer.sharded:  # the other processes are gone: read the gathered final/ model
        from chefgenius.models.builders import load_for_inference

        model = load_for_inference(final_dir)[0]
    text = generate_texts(model, trainer.tokenizer, trainer.is_seq2seq, prompt,
                          GenerationSettings(preset="greedy", max_new_tokens=cfg.evaluation.max_new_tokens,
                                             coverage=COVERAGE_STRENGTH),
                          max_prompt_tokens=cfg.data.max_prompt_tokens).texts[0]
    typer.echo(f"\nsample recipe for: {prompt}\n\n{render_recipe(parse_recipe(text))}")


NVIDIA_DEVICE_NODES = (Path("/dev/nvidiactl"), Path("/dev/nvidia0"))


def _check_gpus_for(device: str, nproc: int) -> None:
    """Refuse a layout with no GPU for each of ``nproc`` processes before launching (the same rule every
    rank applies at start, :func:`runtime.rank_device`); torch is imported only where a GPU may be (an
    explicit ``cuda`` device, or ``auto`` on a machine with NVIDIA device nodes), so that a CPU launch
    does not pay for importing torch twice."""
    if device == "cpu" or (device == "auto" and sys.platform.startswith("linux")
                           and not any(node.exists() for node in NVIDIA_DEVICE_NODES)):
        return
    from chefgenius.runtime.devices import rank_device

    rank_device(device, nproc, 0, nproc)


def _launch_torchrun(nproc: int, max_restarts: int) -> None:
    """Replace this process by torchrun running the same ``train`` command in ``nproc`` processes."""
    if "RANK" in os.environ:
        _fail("--nproc is for launching; inside torchrun run 'chefgenius train' without it", 2)
    argv, rest, skip = sys.argv[1:], [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--nproc", "--max-restarts"):
            skip = True
        elif not arg.startswith(("--nproc=", "--max-restarts=")):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}", "-m", "chefgenius", *rest]
    # distributed.LAUNCHER_PID_ENV, spelled here so that launching imports no torch; execv keeps the pid,
    # so this process becomes the workers' parent, torchrun's agent.
    os.environ["CHEFGENIUS_LAUNCHER_PID"] = str(os.getpid())
    # The agent ignores a scheduler's time-limit warning (SIGUSR1/2 would kill it, and with it every
    # worker); the workers inherit the ignore and replace it with their own handler: stop and save.
    from chefgenius.training.signals import WARNING_SIGNALS  # standard library only: no torch at launch

    for sig in WARNING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


def _write_report(run_dir: Path) -> None:
    from chefgenius.evaluation.report import write_report

    try:
        path = write_report(run_dir)
        typer.echo(f"report: {path}")
    except Exception as err:  # the model is saved; a plotting problem must not fail the run, but is said
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        typer.echo(f"WARNING: the run report was not written ({reason}); the final model is saved; run "
                   f"'chefgenius report {run_dir}' once the cause is fixed", err=True)


def _load_model(run: Optional[Path], model: Optional[str], device: str):
    """Model, tokenizer, is_seq2seq and the prompt budget it was trained with."""
    from chefgenius.generation.loading import load_generator

    g = load_generator(run=run, model=model, device=device)
    return g.model, g.tokenizer, g.is_seq2seq, g.max_prompt_tokens


@app.command()
@user_errors
def generate(
    ingredients: Annotated[Optional[str], typer.Option(help="Comma-separated ingredients.")] = None,
    run: Annotated[Optional[Path], typer.Option(help="Run directory (uses its final/ model).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model dir, checkpoint dir or hub id.")] = None,
    title: Annotated[Optional[str], typer.Option(help="Fix the recipe title.")] = None,
    num: Annotated[int, typer.Option(min=1, help="Recipes per prompt.")] = 1,
    preset: Annotated[str, typer.Option(help="greedy, balanced, creative or beam.")] = "greedy",
    temperature: Annotated[Optional[float], typer.Option(min=0.01)] = None,
    top_p: Annotated[Optional[float], typer.Option(min=0.0, max=1.0)] = None,
    top_k: Annotated[Optional[int], typer.Option(min=0)] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option(min=1.0)] = None,
    no_repeat_ngram_size: Annotated[Optional[int], typer.Option(min=0)] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    seed: Annotated[int, typer.Option(help="Same seed, same text.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the parsed structure as JSON.")] = False,
    input_file: Annotated[Optional[Path], typer.Option("--input", help="One ingredient list per line.")] = None,
    output_file: Annotated[Optional[Path], typer.Option("--output", help="JSONL output for --input.")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    coverage: Annotated[bool, typer.Option("--coverage", help="Steer decoding to use every requested "
                        "ingredient in the list and in the directions.")] = False,
    coverage_strength: Annotated[float, typer.Option(
        min=0.0, help="Strongest logit bonus --coverage tries.")] = COVERAGE_STRENGTH,
    guard: Annotated[bool, typer.Option(help="Forbid repeated ingredient lines and sentences and out-of-order "
                     "step numbers while decoding (generation/guard.py).")] = True,
) -> None:
    """Generate recipes from ingredients."""
    from chefgenius.data.recipe_format import parse_recipe, render_recipe
    from chefgenius.generation.decode import GenerationSettings, generate_texts, recipe_record

    if (ingredients is None) == (input_file is None):
        raise ConfigError("pass --ingredients 'a, b, c' or --input FILE (one ingredient list per line)")
    settings = GenerationSettings(preset=preset, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  top_k=top_k, repetition_penalty=repetition_penalty,
                                  no_repeat_ngram_size=no_repeat_ngram_size, seed=seed,
                                  coverage=coverage_strength if coverage else 0.0, guard=guard)
    settings.generate_kwargs(num)  # validates the preset before the model loads
    m, tok, seq2seq, max_prompt_tokens = _load_model(run, model, device)

    def gen(prompt: str) -> list[str]:
        result = generate_texts(m, tok, seq2seq, prompt, settings, num=num, title=title,
                                max_prompt_tokens=max_prompt_tokens)
        for line in result.warnings(max_prompt_tokens):
            typer.echo(f"warning: {line}", err=True)
        return result.texts

    if input_file is not None:
        _generate_file(gen, input_file, output_file)
        return
    for i, text in enumerate(gen(ingredients)):
        record = recipe_record(ingredients, text)
        if as_json:
            typer.echo(json.dumps(record))
        else:
            if i:
                typer.echo("\n" + "-" * 40 + "\n")
            parsed = parse_recipe(text)
            typer.echo(render_recipe(parsed) if parsed.is_complete else text)


def _generate_file(gen: Any, input_file: Path, output_file: Optional[Path]) -> None:
    """``generate --input``: one JSON line per generated recipe, for one ingredient list per input line."""
    from tqdm.auto import tqdm

    from chefgenius.generation.decode import recipe_record

    if not input_file.is_file():
        raise ConfigError(f"--input {input_file} does not exist")
    prompts = [line.strip() for line in input_file.read_text().splitlines() if line.strip()]
    out = open(output_file, "w") if output_file else sys.stdout
    try:
        for p in tqdm(prompts, desc="generate", file=sys.stderr):
            for i, text in enumerate(gen(p)):
                record = recipe_record(p, text)
                out.write(json.dumps({"ingredients": p, "index": i, "text": text, "title": record["title"],
                                      "ingredients_list": record["ingredients"],
                                      **{k: v for k, v in record.items() if k not in ("title", "ingredients")}})
                          + "\n")
    finally:
        if output_file:
            out.close()


@app.command("eval")
@user_errors
def eval_(
    run: Annotated[Path, typer.Option(help="Run directory.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Evaluate this checkpoint instead of final/.")] = None,
    split: Annotated[str, typer.Option(help="val or train.")] = "val",
    num_samples: Annotated[int, typer.Option(min=0, help="Recipes to generate for text metrics.")] = 20,
    preset: Annotated[str, typer.Option(help="Decoding preset for the samples.")] = "greedy",
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1)] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    coverage: Annotated[bool, typer.Option("--coverage", help="Decode with ingredient coverage (see generate).")]
    = False,
    coverage_strength: Annotated[float, typer.Option(
        min=0.0, help="Strongest logit bonus --coverage tries.")] = COVERAGE_STRENGTH,
    guard: Annotated[bool, typer.Option(help="Forbid repeated ingredient lines and sentences and out-of-order "
                     "step numbers while decoding (generation/guard.py).")] = True,
    against: Annotated[Optional[Path], typer.Option(
        help="An earlier eval.json on the same prompts: print the BLEU difference with its paired 95% "
             "interval.")] = None,
) -> None:
    """Loss, perplexity and text metrics (BLEU, ROUGE, ingredient coverage, structure, repetition)."""
    from rich.console import Console
    from rich.table import Table

    from chefgenius.evaluation.evaluate import METRIC_KEYS, evaluate_run
    from chefgenius.generation.decode import GenerationSettings

    if split not in ("val", "train"):
        raise ConfigError(f"--split must be val or train, got {split!r}")
    GenerationSettings(preset=preset).generate_kwargs(1)  # validates the preset before the model loads
    result = evaluate_run(run, checkpoint=checkpoint, split=split, num_samples=num_samples, preset=preset,
                          max_new_tokens=max_new_tokens, device=device,
                          coverage_strength=coverage_strength if coverage else 0.0, guard=guard, against=against)
    table = Table(title=f"{result['model']} on {split} ({result['recipes']} recipes, "
                        f"{result['num_samples']} generated, {preset}{', coverage' if coverage else ''}"
                        f"{'' if guard else ', no guard'})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in METRIC_KEYS:
        if key in result:
            table.add_row(key, f"{result[key]:.4f}")
    Console().print(table)
    if "against" in result:
        a = result["against"]
        typer.echo(f"BLEU against {a['file']}: {a['bleu_difference']:+.2f} (95% paired bootstrap interval "
                   f"{a['bleu_low']:+.2f} to {a['bleu_high']:+.2f}; an interval holding 0 is no difference)")
    typer.echo(f"wrote {run / 'eval.json'}")


@app.command()
@user_errors
def serve(
    run: Annotated[Optional[Path], typer.Option(help="Run directory: serves final/, offers its checkpoints.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Serve this checkpoint of the run by default.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Serve a Hugging Face model directory (an export).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (localhost only by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting or running before 429.")] = 8,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds one request may take, queue wait and every "
                                                         "decode included; then it is cancelled (504).")] = 60.0,
    api_key: Annotated[Optional[str], typer.Option(help="Require 'Authorization: Bearer KEY' on /v1 routes "
                                                        "(default: $CHEFGENIUS_API_KEY).")] = None,
    grace: Annotated[float, typer.Option(min=0.0, help="On SIGTERM/Ctrl-C, seconds to let queued requests finish "
                                                       "before cancelling them; a second Ctrl-C exits.")] = 10.0,
    docs: Annotated[bool, typer.Option(help="Serve the OpenAPI pages at /docs (off by default).")] = False,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for generation (default: every core "
                                                            "but one, which the HTTP side keeps).")] = None,
) -> None:
    """A page for cooks, a recipe API (POST /v1/recipes) and OpenAI-compatible completions and chat
    (POST /v1/completions, /v1/chat/completions)."""
    import importlib.util

    from chefgenius.checkpoint.run_directory import RunDirectory

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("chefgenius serve needs FastAPI and uvicorn: pip install -e '.[serve]'")
    if (run is None) == (model is None):
        raise ConfigError("pass --run RUN (optionally with --checkpoint PATH) or --model DIR")
    if model is not None:
        if not model.is_dir():
            raise ConfigError(f"--model {model} is not a directory")
        default = model
    else:
        rd = RunDirectory(run)
        if not rd.path.is_dir():
            raise ConfigError(f"run directory {run} does not exist")
        default = checkpoint if checkpoint is not None else rd.final
        if not default.is_dir():
            raise ConfigError(f"{default} does not exist; train to completion or pass --checkpoint PATH")
    from chefgenius.serving.app import Sources
    from chefgenius.serving.app import serve as run_server

    typer.echo(f"serving {default} on http://{host}:{port}/ (recipe API /v1/recipes, OpenAI API /v1/completions "
               "and /v1/chat/completions)")
    run_server(Sources(default.resolve(), run.resolve() if run else None), host=host, port=port, device=device,
               max_queue=max_queue, timeout_s=timeout, api_key=api_key, grace_s=grace, docs=docs, threads=threads)


@app.command()
@user_errors
def report(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Write PNG plots and a self-contained HTML page into RUN_DIR/report/."""
    from chefgenius.evaluation.report import write_report

    typer.echo(f"wrote {write_report(run_dir)}")


@data_app.command("check")
@user_errors
def data_check(
    path: Annotated[str, typer.Argument(help="CSV, JSONL, dataset dir or hub id.")],
    fmt: Annotated[str, typer.Option("--format", help="auto, csv, jsonl, hf.")] = "auto",
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Use this config's quality rules.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set")] = None,
    examples: Annotated[int, typer.Option(min=0, help="Examples per drop reason.")] = 3,
) -> None:
    """Rows read / kept / dropped per reason, with examples."""
    from chefgenius.data.clean import clean_recipes
    from chefgenius.data.prepared import stored_report
    from chefgenius.data.sources import read_source
    from chefgenius.data.tokenization import default_cache_dir

    cfg = load_config_for_data(config, [*(set_ or []), f"data.format={fmt}"], path)
    report = stored_report(cfg.data, default_cache_dir(cfg.data.cache_dir))
    if report is not None:  # prepared before: the stored report of this exact source and quality config
        typer.echo(f"{path}: read {report.num_read}, kept {report.num_kept}, dropped {report.num_dropped} "
                   "(from the prepared dataset's report)")
        _print_report(report, examples)
        return
    kept, report = clean_recipes(read_source(cfg.data.path, cfg.data.format), cfg.data.quality)
    report.max_examples = examples
    typer.echo(f"{path}: read {report.num_read}, kept {report.num_kept}, dropped {report.num_dropped}")
    _print_report(report, examples)
    if kept:
        ranked = sorted(kept, key=lambda r: r.quality_score or 0.0)
        low, median = ranked[0].quality_score or 0.0, ranked[len(ranked) // 2].quality_score or 0.0
        typer.echo(f"  quality score of kept recipes: min {low:.2f}, median {median:.2f} "
                   f"(threshold data.quality.min_quality={cfg.data.quality.min_quality})")
        for r in ranked[:examples]:
            if (r.quality_score or 0.0) < 1.0:
                typer.echo(f"           lowest: row {r.source_row}: {r.title[:60]!r} score={r.quality_score:.2f}")


def _print_report(report: Any, examples: int) -> None:
    for reason, n in report.dropped.most_common():
        typer.echo(f"  dropped {n:5d}  {reason}")
        for ex in report.examples.get(reason, [])[:examples]:
            typer.echo(f"           e.g. {ex}")
    for what, n in report.repaired.most_common():
        typer.echo(f"  repaired {n:4d}  {what}")


@data_app.command("prepare")
@user_errors
def data_prepare(
    path: Annotated[str, typer.Argument(help="CSV, JSONL or dataset dir (the same as data.path).")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="The config you will train with.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Cleaning processes (default: up to 2).")] = None,
    encoder: Annotated[str, typer.Option(help="auto: tiktoken where it gives the tokenizer's ids (checked while "
                                              "it runs); hf: the tokenizer itself (same ids, slower).")] = "auto",
) -> None:
    """Clean, split and tokenise SOURCE once into a memory-mapped dataset that `train` then maps."""
    import time

    from chefgenius.data.prepared import prepare_dataset
    from chefgenius.data.tokenization import default_cache_dir
    from chefgenius.data.tokenizer import load_tokenizer
    from chefgenius.models.builders import config_is_seq2seq

    cfg = load_config_for_data(config, set_, path)
    mc = cfg.model
    t0 = time.perf_counter()
    ds = prepare_dataset(cfg.data, is_seq2seq=config_is_seq2seq(mc),
                         tokenizer=None if mc.from_scratch else load_tokenizer(mc.name_or_path),
                         vocab_size=mc.vocab_size if mc.from_scratch else None,
                         cache_dir=default_cache_dir(cfg.data.cache_dir), log=typer.echo, progress=True,
                         workers=workers, encoder=encoder)
    rep = ds.report
    tokens = sum(int(ds.meta["arrays"][s][n]["length"]) for s in ("train", "val") for n in ("src", "tgt"))
    size = sum(p.stat().st_size for p in ds.path.rglob("*") if p.is_file())
    typer.echo(f"{path}: read {rep.num_read}, kept {rep.num_kept}, dropped {rep.num_dropped}; "
               f"{len(ds.train)} train / {len(ds.val)} val recipes, {tokens} tokens, {size / 1e6:.1f} MB "
               f"({size / max(1, tokens):.2f} bytes/token) in {ds.path}; {time.perf_counter() - t0:.1f} s")


def load_config_for_data(config: Optional[Path], set_: Optional[list[str]], path: str):
    from chefgenius.config import load_config

    cfg = load_config(config, set_ or [])
    cfg.data.path = path
    if Path(path).exists():
        cfg.data.path = str(Path(path).resolve())  # the same absolute path `train` records
    return cfg


@ckpt_app.command("list")
@user_errors
def ckpt_list(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """One row per checkpoint with validity, latest and best."""
    from chefgenius.checkpoint.inspection import list_run

    rows = list_run(run_dir)
    if not rows:
        raise ConfigError(f"{run_dir} holds no checkpoints")
    typer.echo(f"{'checkpoint':<16}{'step':>8}{'epoch':>7}{'val_loss':>10}{'size':>10}  status")
    for r in rows:
        mark = " ".join(x for x, on in (("latest", r["latest"]), ("best", r["best"])) if on)
        status = "valid" if r["valid"] else f"INVALID: {r['problem']}"
        vl = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-"
        ep = str(r["epoch"]) if r["epoch"] is not None else "-"
        typer.echo(f"{r['name']:<16}{r['step']:>8}{ep:>7}{vl:>10}{r['bytes'] / 1e6:>8.1f}MB  {status} {mark}".rstrip())


@ckpt_app.command("inspect")
@user_errors
def ckpt_inspect(path: Path, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Summarise what a checkpoint holds."""
    from chefgenius.checkpoint import checkpoint_problem
    from chefgenius.checkpoint.inspection import inspect_checkpoint, to_json

    if not path.is_dir():
        raise ConfigError(f"{path} is not a checkpoint directory")
    problem = checkpoint_problem(path)
    if problem:
        _fail(f"{path}: INVALID: {problem}", 1)
    info = inspect_checkpoint(path)
    if as_json:
        typer.echo(to_json(info))
        return
    typer.echo(f"{path}: step {info['step']}, format v{info['format_version']}, valid")
    typer.echo(f"  position: {info['position']}")
    typer.echo(f"  processes: {info['processes']}")
    typer.echo(f"  epoch samples: {info['epoch_samples']}")
    typer.echo(f"  data: {info['data']}")
    typer.echo(f"  versions: {info['versions']}")
    typer.echo(f"  train state: {info['train_state']}")
    typer.echo(f"  sampler: {info['sampler']}")
    typer.echo(f"  rng: {info['rng']}")
    for name, s in info["pieces"].items():
        typer.echo(f"  {name:<36} {s['tensors']:>5} tensors {s['bytes'] / 1e6:>9.2f} MB")
    typer.echo(f"  model: {info['config']['model']}")


@ckpt_app.command("verify")
def ckpt_verify(path: Path) -> None:
    """Exit 0 when every file matches the manifest, else 1 naming the bad file."""
    from chefgenius.checkpoint import checkpoint_problem

    if not path.is_dir():
        _fail(f"{path} is not a checkpoint directory", 1)
    problem = checkpoint_problem(path)
    if problem:
        _fail(problem, 1)
    typer.echo(f"{path}: OK")


@ckpt_app.command("diff")
@user_errors
def ckpt_diff(a: Path, b: Path) -> None:
    """Config and state differences between two checkpoints."""
    from chefgenius.checkpoint.inspection import diff_checkpoints

    diff = diff_checkpoints(a, b)
    if not diff:
        typer.echo("no differences in config or state summary")
    for section, changes in diff.items():
        typer.echo(f"[{section}]")
        for key, (va, vb) in changes.items():
            typer.echo(f"  {key}: {va!r} -> {vb!r}")


@ckpt_app.command("export")
@user_errors
def ckpt_export(path: Path, out: Path,
                merge_lora: Annotated[bool, typer.Option("--merge-lora/--no-merge-lora")] = True,
                force: Annotated[bool, typer.Option("--force", help="Replace a non-empty OUT directory.")] = False,
                ) -> None:
    """Write one Hugging Face model directory (weights and tokenizer; LoRA merged unless --no-merge-lora)."""
    from chefgenius.checkpoint import checkpoint_problem
    from chefgenius.checkpoint.final import export_directory, write_hf_directory
    from chefgenius.checkpoint.layout import has_manifest
    from chefgenius.models.builders import load_for_inference

    if not path.is_dir():
        raise ConfigError(f"{path} does not exist or is not a directory (pass a checkpoint or final/ directory)")
    if has_manifest(path):
        problem = checkpoint_problem(path)
        if problem:
            raise ConfigError(f"refusing to export: {problem}")
    model, tok, _ = load_for_inference(path, merge_lora=merge_lora)
    export_directory(out, lambda d: write_hf_directory(d, model, tok), force=force)
    typer.echo(f"exported {path} to {out}")


def main() -> None:
    if sys.argv[1:2] == ["train"]:
        from chefgenius.training.signals import listen_early

        listen_early()  # before typer parses and torch loads: a scheduler's warning may come at once
    try:
        app()
    finally:
        # Interpreter shutdown would walk every object torch and transformers made at import (about 2 s
        # here, paid by each of torchrun's processes at every launch); frozen objects are left to the
        # exit. Files and locks still close: modules are torn down by reference count, not by the GC.
        gc.freeze()


if __name__ == "__main__":
    main()

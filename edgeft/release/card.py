"""Text of a release: the model card (README.md) and the Ollama Modelfile, rendered from the manifest.

The card leads with the claim and its evidence (task metric vs the prompted base with its interval), then what it
may have cost (forgetting, quantization), speed, and how to run the single GGUF with llama.cpp, llama-cpp-python
and Ollama.
"""

from __future__ import annotations

import re

# The card's line that binds it to manifest.json; `edgeft release verify` reads it back with DIGEST_PATTERN.
DIGEST_LINE = "manifest.json sha256: `{}`"
DIGEST_PATTERN = re.compile(r"^manifest\.json sha256: `([0-9a-f]{64})`$", re.M)

# Ollama needs its own (Go) template: one per chat-template family, found by the markers the Jinja template emits.
# Stop strings are the family's end-of-turn markers, so generation ends where training taught it to.
OLLAMA_TEMPLATES = [
    ("<|im_start|>", ["<|im_start|>", "<|im_end|>"],
     "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
     "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"),
    ("<|start_header_id|>", ["<|start_header_id|>", "<|eot_id|>"],
     "<|begin_of_text|>{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
     "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
     "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("<start_of_turn>", ["<start_of_turn>", "<end_of_turn>"],
     "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n"
     "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"),
    ("<|user|>", ["<|user|>", "<|end|>", "<|assistant|>"],
     "{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
     "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"),
    ("[INST]", ["[INST]", "[/INST]", "</s>"],
     "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ if and $.System (eq (len (slice $.Messages 0)) 1) }}"
     "{{ $.System }}\n\n{{ end }}{{ .Content }}[/INST]{{ else }}{{ .Content }}</s>{{ end }}{{ end }}"),
]


def ollama_template(chat_template: str | None) -> tuple[str | None, list[str]]:
    for marker, stops, template in OLLAMA_TEMPLATES:
        if chat_template and marker in chat_template:
            return template, stops
    return None, []


def _triple_quoted(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def render_modelfile(gguf_name: str, *, chat_template: str | None = None, system_prompt: str | None = None,
                     stop_tokens: list[str] | None = None, license_id: str | None = None) -> str:
    template, stops = ollama_template(chat_template)
    lines = [f"# Run: ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{gguf_name}"]
    if template:
        lines.append(f"TEMPLATE {_triple_quoted(template)}")
    else:
        lines.append("# No TEMPLATE: Ollama uses the chat template stored in the GGUF (tokenizer.chat_template).")
    if system_prompt:
        lines.append(f"SYSTEM {_triple_quoted(system_prompt)}")
    for stop in dict.fromkeys([*(stop_tokens or []), *stops]):
        lines.append(f'PARAMETER stop "{stop}"')
    # Evaluated greedily; the same settings reproduce the card's numbers.
    lines.append("PARAMETER temperature 0")
    if license_id:
        lines.append(f"LICENSE {_triple_quoted(license_id)}")
    return "\n".join(lines) + "\n"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _task_section(task: dict) -> list[str]:
    if not task:
        return ["No task metric was recorded."]
    ci = task.get("ci95")
    ci_text = f" (95% CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} points, n={task.get('n', '?')})" if ci else ""
    delta = task.get("delta")
    return [
        f"| model | {task.get('metric', 'metric')} on {task.get('n', '?')} held-out examples |",
        "|---|---|",
        f"| this fine-tune ({task.get('quant', 'GGUF')}) | {_pct(task.get('finetune'))} |",
        f"| prompted base ({task.get('baseline_setup', 'system prompt + examples')}) | {_pct(task.get('baseline'))} |",
        "",
        f"Difference: **{_num(None if delta is None else 100 * delta, '+.1f')} points**{ci_text}.",
    ]


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ladder_section(ladder: dict | None) -> list[str]:
    """The baseline ladder: what the fine-tune had to beat, and what the prompt would cost per request."""
    if not ladder:
        return []
    lines = ["", "## The baseline ladder (the base at the same quant, same decoding and metric)",
             "| prompt | score (95% CI, n) | prompt tokens/request | time to first token, ms | total ms/request |",
             "|---|---|---|---|---|"]
    for row in ladder["rows"]:
        name = f"**{row['rung']}** ({row['mark']})" if row.get("mark") else row["rung"]
        low, high = row["ci95"]
        lines.append(f"| {name} | {_pct(row['score'])} ({_pct(low)} to {_pct(high)}, n={row.get('n', '?')}) | "
                     f"{_num(row['prompt_tokens'], '.0f')} | {_ms(row['ttft_ms'])} | {_ms(row['total_ms'])} |")
    from runtime.ladder_report import tax_sentence

    tax = ladder.get("prompt_tax") or {}
    lines += ["", f"**Verdict: {ladder['verdict']}.**"]
    if tax.get("tokens_per_request") is not None:
        lines += ["", tax_sentence(tax)]
    return lines


def _cost_section(manifest: dict) -> list[str]:
    m = manifest.get("metrics", {})
    forgetting, quant = m.get("forgetting", {}), m.get("quantization", {})
    reference = quant.get("reference", "F16")
    return [
        "", "## What it may have cost", "| check | value |", "|---|---|",
        f"| forgetting probe perplexity, fine-tune / base | {_num(forgetting.get('ppl_finetune'), '.2f')} / "
        f"{_num(forgetting.get('ppl_base'), '.2f')} (ratio {_num(forgetting.get('ratio'))}) |",
        f"| {manifest['quant']} vs {reference}: mean KL-divergence | {_num(quant.get('kld'), '.4f')} |",
        f"| {manifest['quant']} vs {reference}: top-1 agreement | {_pct(quant.get('top1'))} |",
    ]


def _quant_section(sweep: dict | None) -> list[str]:
    """Why this quant: every candidate's task score against its size (runtime.quant_sweep), and the rule."""
    if not sweep:
        return []
    from runtime.quant_report import rule, table_lines

    return ["", "## Why this quant (the task's own score at each size)",
            f"**{sweep['reason']}.** The release ships {rule(sweep)}; each file scored on the same held-out "
            "examples, with the same decoding and metric. ◆: no smaller file scores as well.", "",
            *table_lines(sweep)]


def _speed_section(speed: dict) -> list[str]:
    lines = ["", "## Speed (llama.cpp on the machine that built it)", "| model | prompt tok/s | generation tok/s |",
             "|---|---|---|"]
    for who in ("finetune", "base"):
        row = speed.get(who) or {}
        lines.append(f"| {who} | {_num(row.get('pp'), '.1f')} | {_num(row.get('tg'), '.1f')} |")
    if speed.get("settings"):
        lines += ["", f"Settings: {speed['settings']}."]
    return lines


def _gates_section(gates: list[dict]) -> list[str]:
    lines = ["", "## Gates", "| gate | result |", "|---|---|"]
    return lines + ([f"| {g.get('text') or g['gate']} | {'pass' if g.get('passed') else 'FAIL'} |" for g in gates]
                    or ["| none | - |"])


def _run_section(name: str, gguf_name: str, system_prompt: str | None) -> list[str]:
    system_arg = f' -p "{system_prompt}"' if system_prompt else ""
    return [
        "", "## Run it", "llama.cpp:", "```sh", f"llama-cli -m {gguf_name} -cnv --temp 0{system_arg}", "```",
        "llama-cpp-python:", "```python", "from llama_cpp import Llama", f"llm = Llama(model_path=\"{gguf_name}\")",
        "messages = " + (f"[{{\"role\": \"system\", \"content\": {system_prompt!r}}}, " if system_prompt else "[")
        + "{\"role\": \"user\", \"content\": \"...\"}]",
        "print(llm.create_chat_completion(messages, temperature=0)[\"choices\"][0][\"message\"][\"content\"])",
        "```", "Ollama:", "```sh", f"ollama create {name} -f Modelfile && ollama run {name}", "```",
    ]


# vLLM refuses a --max-lora-rank outside this list (vllm/config/lora.py, LoRAConfig's possible_max_ranks) and any
# adapter whose rank is above it: the card names the smallest allowed value that holds the adapter.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest --max-lora-rank vLLM accepts for an adapter of `rank`; None when vLLM cannot serve it."""
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), None)


def vllm_command(base: str, name: str, adapter_dir: str, rank: int) -> str | None:
    limit = vllm_max_lora_rank(rank)
    if limit is None:
        return None
    return f"vllm serve {base} --enable-lora --lora-modules {name}={adapter_dir} --max-lora-rank {limit}"


def _fleet_section(manifest: dict) -> list[str]:
    """Past one box: the peft adapter folder the release ships, served by vLLM over the upstream base (vLLM
    batches requests for different adapters in one step)."""
    adapter = manifest.get("adapter")
    base = (manifest["base_model"].get("provenance") or {}).get("upstream") or manifest["base_model"].get("name")
    if not adapter or not base:
        return []
    command = vllm_command(base, manifest["name"], adapter["path"], int(adapter["rank"]))
    if command is None:
        return ["", f"vLLM: the adapter's rank {adapter['rank']} is above the largest --max-lora-rank vLLM accepts "
                    f"({VLLM_LORA_RANKS[-1]})."]
    return ["", "vLLM (many adapters over one base on a GPU server; the peft adapter folder ships in the release):",
            "```sh", command, "```"]


def _provenance_section(manifest: dict) -> list[str]:
    base = manifest["base_model"]
    license_line = base.get("license") or "**not found**"
    lines = ["", "## Provenance",
             f"- Base model: `{base.get('name')}`; license: {license_line}"
             + (f" (from {base['source']})" if base.get("source") else "")]
    origin = base.get("provenance")
    if origin:
        lines.append(f"- Base weights: {origin.get('source', 'recorded in source.json')}"
                     + (f", upstream `{origin['upstream']}`" if origin.get("upstream") else "")
                     + (f", sha256 {origin['sha256']}" if origin.get("sha256") else ""))
    if base.get("flag"):
        lines.append(f"- **License flag:** {base['flag']}")
    lines += [f"- Data: " + ", ".join(f"{role} `{_file_name(d['path'])}` (sha256 {d['sha256'][:12]}…)"
                                     for role, d in manifest.get("data", {}).items()),
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items() if v),
              "- The sha256 of every file but this card is in `manifest.json` (this card records the manifest's own, "
              "below); the recipe that made it is there too."]
    return lines


def _check_section(digest: str | None) -> list[str]:
    if digest is None:
        return []
    return [
        "", "## Check it", DIGEST_LINE.format(digest), "",
        "`manifest.json` holds the sha256 of every other file, the figures and gates this card shows, the verdict and "
        "the recipe; this card is rendered from it. In the release folder:",
        "```sh", f"edgeft release verify . --digest {digest}", "sha256sum manifest.json   # or by hand: the line above",
        "```",
        "`release verify` re-hashes every file against the manifest, checks that this card shows the manifest's "
        "figures, gates and verdict, that each gate's pass or fail follows from its value and threshold, and that the "
        "manifest's sha256 is the one given. This line travels with the files, so it catches accidents and hand "
        "edits; against a deliberate forgery, take the digest from where the publisher announced it (release notes, "
        "a signed tag or commit; `make release` writes it beside the folder as NAME.sha256), not from this card.",
    ]


def recorded_digest(card: str) -> str | None:
    """The manifest sha256 a card records (None when it records none)."""
    found = DIGEST_PATTERN.search(card)
    return found.group(1) if found else None


def render_model_card(manifest: dict, *, gguf_name: str, system_prompt: str | None = None,
                      digest: str | None = None) -> str:
    """The card, from the manifest alone (so verify can render it again and compare); `digest` is the sha256 of
    manifest.json as published."""
    m = manifest.get("metrics", {})
    base = manifest["base_model"]
    upstream = (base.get("provenance") or {}).get("upstream")
    lines = [
        "---",
        f"license: {base.get('license') or 'unknown'}",
        f"base_model: {upstream or base.get('name')}",
        "tags: [gguf, edgeft, llama.cpp]",
        "---",
        f"# {manifest['name']}",
        "",
        m.get("description") or f"A fine-tune of `{base.get('name')}`, shipped as one GGUF ({manifest['quant']}).",
        "",
        "## Does it beat the prompted base?",
        *_task_section(m.get("task", {})),
        *_ladder_section(m.get("ladder")),
        *_cost_section(manifest),
        *_quant_section(m.get("quants")),
        *_speed_section(m.get("throughput", {})),
        *_gates_section(manifest.get("gates", [])),
        *_run_section(manifest["name"], gguf_name, system_prompt),
        *_fleet_section(manifest),
        *_provenance_section(manifest),
        *_check_section(digest),
    ]
    return "\n".join(lines)


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]

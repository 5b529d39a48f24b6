"""How to serve a library adapter elsewhere: an Ollama ``Modelfile``, and the command lines for vLLM, llama.cpp's
server, Ollama and the DemoForge front end that talks to them.

Paths in the commands are relative to the DemoForge home (run them from there): the UI never shows the server's
own absolute paths, and the home is what a user copies to a serving machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from core import adapters, specs, store

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub id of the embedded chat model (the embedded file is a 4-bit GGUF of it)."""
MAX_NUM_CTX = 8192
"""Largest ``num_ctx`` written into a Modelfile: Ollama reserves the whole KV cache up front."""
VLLM_DEFAULT_MAX_RANK = 16

# Ollama's Go templates. ChatML (SmolLM2, Qwen): the system turn first when there is one, then every other turn.
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    '{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
    "{{ end }}{{- end }}<|im_start|>assistant\n"
)
LLAMA3_TEMPLATE = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    '{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
    "{{ .Content }}<|eot_id|>{{ end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def chat_template_of(folder: Path) -> str | None:
    """The Jinja chat template saved with a tokenizer (``chat_template.jinja`` or ``tokenizer_config.json``)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def ollama_template(jinja: str | None) -> tuple[str | None, list[str], str | None]:
    """(Ollama TEMPLATE, stop strings, the template's own default system prompt) for a Jinja chat template.

    ChatML and Llama-3 headers are translated; another template gets None (Ollama then reads the GGUF's
    ``tokenizer.chat_template`` itself, which it does for the common families).
    """
    if not jinja:
        return None, [], None
    if "<|im_start|>" in jinja and "<|im_end|>" in jinja:
        found = re.search(r"<\|im_start\|>system\\?n(.*?)<\|im_end\|>", jinja.replace("\n", "\\n"))
        default = found.group(1).replace("\\n", "\n") if found and "{{" not in found.group(1) else None
        return CHATML_TEMPLATE, ["<|im_end|>", "<|im_start|>"], default
    if "<|start_header_id|>" in jinja:
        return LLAMA3_TEMPLATE, ["<|eot_id|>", "<|start_header_id|>"], None
    return None, [], None


def _quote(text: str) -> str:
    """A Modelfile value: triple-quoted so newlines and quotes survive (a lone triple quote cannot occur)."""
    return '"""' + text.replace('"""', '"\\""') + '"""'


def modelfile_text(
    model_file: str,
    jinja: str | None,
    context_length: int,
    system: str | None = None,
    adapter_file: str | None = None,
) -> str:
    """An Ollama Modelfile: FROM, ADAPTER (a GGUF LoRA), TEMPLATE, SYSTEM, stop parameters and num_ctx.

    Args:
        model_file: the GGUF, relative to the Modelfile ('./x.gguf').
        jinja: the tokenizer's chat template (translated by :func:`ollama_template`).
        context_length: the model's context; num_ctx is this, capped at :data:`MAX_NUM_CTX`.
        system: the demo profile's system prompt; None keeps the template's own default.
        adapter_file: a GGUF LoRA applied on top of ``model_file``.
    """
    template, stops, default_system = ollama_template(jinja)
    lines = ["# Written by DemoForge. Create the model with: ollama create NAME -f Modelfile", f"FROM {model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER {adapter_file}")
    if template:
        lines.append(f"TEMPLATE {_quote(template)}")
    else:
        lines.append("# No TEMPLATE: Ollama uses the chat template stored in the GGUF (tokenizer.chat_template).")
    chosen = system if system and system.strip() else default_system
    if chosen:
        lines.append(f"SYSTEM {_quote(chosen)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines.append(f"PARAMETER num_ctx {min(context_length, MAX_NUM_CTX)}")
    return "\n".join(lines) + "\n"


def write_modelfile(
    folder: Path, model_file: Path, tokenizer_dir: Path, system: str | None = None, adapter: Path | None = None
) -> Path:
    """Write ``folder/Modelfile`` for ``model_file`` (and ``adapter``), both inside ``folder``."""
    import gguf

    reader = gguf.GGUFReader(str(model_file))
    arch = reader.fields["general.architecture"].contents()
    context = reader.fields.get(f"{arch}.context_length")
    text = modelfile_text(
        f"./{model_file.name}",
        chat_template_of(Path(tokenizer_dir)),
        int(context.contents()) if context else 2048,
        system=system,
        adapter_file=f"./{adapter.name}" if adapter else None,
    )
    path = folder / "Modelfile"
    store.atomic_write_text(path, text)
    return path


def _base_for_vllm(info: adapters.AdapterInfo, home: Path | None) -> tuple[str, str]:
    """(what ``vllm serve`` gets as the base, a note about it)."""
    if specs.embedded_model(info.base_model, "sft") == "smollm2":
        return EMBEDDED_HUB_ID, "the Hub copy of the embedded SmolLM2 (DemoForge runs a 4-bit GGUF of it)"
    if specs.is_hub_id(info.base_model) and not Path(info.base_model).expanduser().exists():
        return info.base_model, "the Hub model the adapter was trained on"
    shown = store.relative_to_home(info.card.get("base_model_path") or info.base_model, home)
    return shown, "the base model folder (copy it to the serving machine)"


def _lora_rank(info: adapters.AdapterInfo) -> int:
    try:
        cfg = json.loads((info.path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return 0
    ranks = [int(cfg.get("r") or 0), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def serve_commands(name: str, home: Path | None = None) -> str:
    """Markdown: how to serve adapter ``name`` on vLLM, llama.cpp's server and Ollama (OpenAI-compatible APIs)."""
    info = adapters.get(name, home)
    root = Path(home) if home is not None else store.home()
    adapter_dir = store.relative_to_home(info.path, root)
    base, note = _base_for_vllm(info, root)
    rank = _lora_rank(info)
    rank_flag = f" --max-lora-rank {rank}" if rank > VLLM_DEFAULT_MAX_RANK else ""
    exports = f"exports/{info.name}"
    exported = (root / exports / f"{info.name}.lora.gguf").is_file()
    modelfile = (root / exports / "Modelfile").is_file()
    # Each server speaks the OpenAI API: a block serves the adapter, checks that the server lists its name, and
    # starts DemoForge in front of it (issue 12's `--backend openai`; chat goes there, classify and training stay).
    front = "curl -s http://127.0.0.1:{port}/v1/models  # lists " + info.name
    app = "python app.py --backend openai --base-url http://127.0.0.1:{port}/v1 --served-model {model}"
    parts = [
        f"### Serve **{info.name}** on a backend",
        "Run these from the DemoForge home folder (`DEMOFORGE_HOME`; copy `adapters/` and `exports/` to the "
        "serving machine). Each server then answers OpenAI-compatible requests with `model` set to the adapter's name; "
        "the second line of each block checks that it is listed, the last starts DemoForge in front of it "
        "(add `--api-key KEY` if the server has one).",
        f"**vLLM** (base: {note}); DemoForge chats with the base, and picking **{info.name}** in the Chat tab's "
        "adapter list sends its requests to the served adapter:",
        "```bash\n"
        f"vllm serve {base} --enable-lora --lora-modules {info.name}={adapter_dir}{rank_flag} --port 8000\n"
        f"{front.format(port=8000)}\n{app.format(port=8000, model=base)}\n```",
        "Or load it into a running vLLM (started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and `--enable-lora`; "
        "DemoForge does this itself when the adapter is picked and the server can read its folder):",
        "```bash\ncurl -X POST http://127.0.0.1:8000/v1/load_lora_adapter -H 'Content-Type: application/json' "
        f"""-d '{{"lora_name": "{info.name}", "lora_path": "{adapter_dir}"}}'\n```""",
        "**llama.cpp server** with the GGUF LoRA"
        + ("" if exported else " (export it first: *Export* with type **lora** above)")
        + ":",
        "```bash\n"
        f"llama-server -m {exports}/base.gguf --lora {exports}/{info.name}.lora.gguf --alias {info.name} --port 8080\n"
        f"{front.format(port=8080)}\n{app.format(port=8080, model=info.name)}\n```",
        "**Ollama**" + ("" if modelfile else " (export first: any type writes the Modelfile)") + ":",
        f"```bash\nollama create {info.name} -f {exports}/Modelfile\n{front.format(port=11434)}\n"
        f"{app.format(port=11434, model=info.name)}\n```",
    ]
    return "\n\n".join(parts)

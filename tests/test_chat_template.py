"""Chat templates rendered with jinja2's sandbox: the real templates of several model families (from
the pinned llama.cpp tree, from model repositories, from the GGUFs llcuda ships), against prompts
written out by hand from the model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import SecurityError

from llcuda.errors import ConfigError, InvalidModelError, ModelNotFoundError
from llcuda.libllama.chat_template import ChatTemplate
from llcuda.models.gguf import read_token_texts

# google/gemma-3-4b-it, tokenizer_config.json (Gemma 3's instruction-tuned models share it)
GEMMA3 = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# mistralai/Mixtral-8x7B-Instruct-v0.1, tokenizer_config.json
MIXTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def templates(llama_src: Path) -> Path:
    return llama_src / "models" / "templates"


def _tree(templates: Path, name: str, **tokens: str) -> ChatTemplate:
    return ChatTemplate((templates / f"{name}.jinja").read_text(encoding="utf-8"), name=name, **tokens)


LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
CHATML_QWEN = {"bos_token": "", "eos_token": "<|im_end|>"}


# -- model families -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct", "meta-llama-Llama-3.3-70B-Instruct"],
)
def test_llama3(templates: Path, name: str) -> None:
    t = _tree(templates, name, **LLAMA3)
    text = t.render(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        date_string="26 Jul 2024",
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert not t.add_special(text), "the template writes BOS: the tokenizer must not add another"


def test_llama32_dates_its_system_prompt_with_strftime_now(templates: Path) -> None:
    from datetime import datetime

    t = _tree(templates, "meta-llama-Llama-3.2-3B-Instruct", **LLAMA3)
    before = datetime.now().strftime("%d %b %Y")
    text = t.render([{"role": "user", "content": "Hi"}])
    after = datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {before}\n" in text or f"Today Date: {after}\n" in text


def test_llama31_tools_go_into_the_first_user_message_with_tojson_indent(templates: Path) -> None:
    t = _tree(templates, "meta-llama-Llama-3.1-8B-Instruct", **LLAMA3)
    text = t.render([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL], date_string="26 Jul 2024")
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nCutting Knowledge Date: December 2023\n"
    )
    assert (
        '{\n    "type": "function",\n    "function": {\n        "name": "get_weather",\n'
        '        "description": "Get the current weather in a city",\n'
    ) in text
    assert text.endswith("Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_qwen25_default_system_message(templates: Path) -> None:
    t = _tree(templates, "Qwen-Qwen2.5-7B-Instruct", **CHATML_QWEN)
    text = t.render([{"role": "user", "content": "Hello"}])
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.add_special(text), "no BOS text: the tokenizer adds BOS where the vocabulary wants one"


def test_qwen25_own_system_message_and_history(templates: Path) -> None:
    t = _tree(templates, "Qwen-Qwen2.5-7B-Instruct", **CHATML_QWEN)
    text = t.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_tools_are_passed_through_as_json(templates: Path) -> None:
    t = _tree(templates, "Qwen-Qwen2.5-7B-Instruct", **CHATML_QWEN)
    text = t.render([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL])
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a '
        'city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": '
        '["city"]}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within <tool_call>"
        '</tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_qwen25_tool_call_and_result_turns(templates: Path) -> None:
    t = _tree(templates, "Qwen-Qwen2.5-7B-Instruct", **CHATML_QWEN)
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
    text = t.render(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "21 C"},
        ]
    )
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}'
        "\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n21 C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    ), "tojson keeps non-ASCII text (ensure_ascii=False)"


def test_qwen3_enable_thinking(templates: Path) -> None:
    t = _tree(templates, "Qwen-Qwen3-0.6B", **CHATML_QWEN)
    chat = [{"role": "user", "content": "Hello"}]
    assert t.render(chat) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert t.render(chat, enable_thinking=True) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert t.render(chat, enable_thinking=False) == (
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_qwen3_drops_earlier_reasoning_from_the_history(templates: Path) -> None:
    t = _tree(templates, "Qwen-Qwen3-0.6B", **CHATML_QWEN)
    text = t.render(
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
            {"role": "user", "content": "3+3?"},
        ]
    )
    assert text == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_mixtral_inst() -> None:
    t = ChatTemplate(MIXTRAL, bos_token="<s>", eos_token="</s>", name="Mixtral")
    text = t.render(
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there"},
            {"role": "user", "content": "How are you?"},
        ]
    )
    assert text == "<s>[INST] Hello [/INST]Hi there</s>[INST] How are you? [/INST]"
    assert not t.add_special(text)


def test_mixtral_refuses_a_system_message() -> None:
    t = ChatTemplate(MIXTRAL, bos_token="<s>", eos_token="</s>", name="Mixtral")
    with pytest.raises(
        ConfigError,
        match=r"Mixtral refused these messages: Conversation roles must alternate "
        r"user/assistant/user/assistant/\.\.\.",
    ):
        t.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])


def test_mistral_nemo_puts_the_system_message_in_the_last_user_turn(templates: Path) -> None:
    t = _tree(templates, "mistralai-Mistral-Nemo-Instruct-2407", bos_token="<s>", eos_token="</s>")
    text = t.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "How are you?"},
        ]
    )
    assert text == "<s>[INST]Hi[/INST]Hello</s>[INST]Be brief.\n\nHow are you?[/INST]"


def test_gemma2(templates: Path) -> None:
    t = _tree(templates, "google-gemma-2-2b-it", bos_token="<bos>", eos_token="<eos>")
    text = t.render(
        [
            {"role": "user", "content": " Hello "},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert text == (
        "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(ConfigError, match="System role not supported"):
        t.render([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])


def test_gemma3_folds_the_system_message_into_the_first_turn() -> None:
    t = ChatTemplate(GEMMA3, bos_token="<bos>", eos_token="<eos>", name="gemma-3")
    text = t.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n<start_of_turn>model\n"
    parts = t.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}])
    assert parts == "<bos><start_of_turn>user\n<start_of_image>What is it?<end_of_turn>\n<start_of_turn>model\n"


def test_phi35_and_add_generation_prompt_false(templates: Path) -> None:
    t = _tree(templates, "microsoft-Phi-3.5-mini-instruct", bos_token="<s>", eos_token="<|endoftext|>")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert t.render(chat) == "<|system|>\nBe brief.<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n"
    assert t.render(chat, add_generation_prompt=False) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHello<|end|>\n<|endoftext|>"
    )


def test_add_generation_prompt_false_ends_after_the_last_turn(templates: Path) -> None:
    t = _tree(templates, "Qwen-Qwen2.5-7B-Instruct", **CHATML_QWEN)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert t.render(chat, add_generation_prompt=False).endswith("<|im_start|>assistant\nHello!<|im_end|>\n")
    assert t.render(chat).endswith("Hello!<|im_end|>\n<|im_start|>assistant\n")


def test_every_template_of_the_pinned_tree_compiles(templates: Path) -> None:
    """The sandbox environment parses every template llama.cpp tests with (generation blocks,
    loop controls, namespaces)."""
    sources = sorted(templates.glob("*.jinja"))
    assert len(sources) > 40
    for source in sources:
        ChatTemplate(source.read_text(encoding="utf-8"), name=source.stem)


def test_generation_blocks_render_their_body() -> None:
    t = ChatTemplate("{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}")
    assert t.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "[a][b]"


def test_loop_controls() -> None:
    t = ChatTemplate(
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ m.content }}{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}"
    )
    chat = [{"role": "system", "content": "S"}] + [{"role": "user", "content": c} for c in "abcd"]
    assert t.render(chat) == "ab", "the system message is skipped; the loop stops after its third item"


def test_tojson_matches_transformers() -> None:
    t = ChatTemplate(
        "{{ messages[0].content | tojson }}|{{ messages[0].content | tojson(indent=2) }}|"
        "{{ messages[0].content | tojson(separators=(',', ':'), sort_keys=true) }}"
    )
    value = {"b": "<é&>", "a": [1, 2]}
    assert t.render([{"role": "user", "content": value}]) == (
        '{"b": "<é&>", "a": [1, 2]}|{\n  "b": "<é&>",\n  "a": [\n    1,\n    2\n  ]\n}|{"a":[1,2],"b":"<é&>"}'
    )


def test_extra_variables_and_documents_reach_the_template() -> None:
    t = ChatTemplate("{{ documents | length }} {{ documents[0].title }} {{ custom }} {{ tools is none }}")
    assert t.render([], documents=[{"title": "T", "text": "x"}], custom=7) == "1 T 7 True"


def test_bos_and_eos_tokens_are_variables() -> None:
    t = ChatTemplate("{{ bos_token }}x{{ eos_token }}", bos_token="<s>", eos_token="</s>")
    assert t.render([]) == "<s>x</s>"
    assert ChatTemplate("{{ bos_token }}x").render([]) == "x"
    assert ChatTemplate("x").add_special("x"), "no BOS token known: let the tokenizer decide"


# -- safety and errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__base__ }}",
        "{{ raise_exception.__globals__ }}",
    ],
)
def test_the_sandbox_blocks_python_internals(source: str) -> None:
    t = ChatTemplate(source, name="evil")
    with pytest.raises(ConfigError, match="the sandbox stopped the chat template of evil") as info:
        t.render([{"role": "user", "content": "x"}])
    assert isinstance(info.value.__cause__, SecurityError)


def test_the_sandbox_keeps_the_messages_unchanged() -> None:
    chat = [{"role": "user", "content": "x"}]
    t = ChatTemplate("{{ messages.append({'role': 'user'}) }}{{ messages[0].update({'role': 'x'}) }}")
    with pytest.raises(ConfigError, match="sandbox"):
        t.render(chat)
    assert chat == [{"role": "user", "content": "x"}]


def test_raise_exception_message_surfaces() -> None:
    t = ChatTemplate("{{ raise_exception('Only user and assistant roles are supported!') }}", name="m")
    with pytest.raises(ConfigError) as info:
        t.render([{"role": "user", "content": "x"}])
    message = str(info.value)
    assert "the chat template of m refused these messages: Only user and assistant roles are supported!" in message
    assert "backend='llama-server'" in message


def test_a_template_that_does_not_compile_names_the_problem_and_the_fix() -> None:
    with pytest.raises(
        ConfigError,
        match=r"the chat template of broken is not a valid Jinja template \(.*line 1\);"
        r" format the prompt yourself and call infer\(\), or use "
        r"backend='llama-server'",
    ):
        ChatTemplate("{% for m in messages %}{{ m.content }}", name="broken")
    with pytest.raises(ConfigError, match="is empty"):
        ChatTemplate("  ", name="blank")


def test_a_template_that_fails_while_rendering() -> None:
    t = ChatTemplate("{{ messages[0]['content'] + 1 }}", name="m")
    with pytest.raises(ConfigError, match=r"the chat template of m failed on these messages \(TypeError"):
        t.render([{"role": "user", "content": "x"}])
    with pytest.raises(ConfigError, match="failed on these messages"):
        ChatTemplate("{{ messages[5].content.strip() }}").render([])


def test_messages_must_be_a_list_of_dicts() -> None:
    t = ChatTemplate("{{ messages | length }}")
    for bad in ("hello", [("user", "hi")], None):
        with pytest.raises(ConfigError, match="list of dicts"):
            t.render(bad)  # type: ignore[arg-type]


def test_compiled_templates_are_cached_by_source() -> None:
    source = "{{ messages | length }} cached"
    assert ChatTemplate(source)._template is ChatTemplate(source, bos_token="<s>")._template


# -- templates and tokens read from GGUF files ----------------------------------------------------


def _write_gguf(
    path: Path,
    *,
    template: str | None,
    tokens: list[str],
    bos: int | None,
    eos: int | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if template is not None:
        writer.add_chat_template(template)
    for key, value in (extra or {}).items():
        writer.add_string(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_from_gguf_reads_the_template_and_the_bos_eos_text(tmp_path: Path) -> None:
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3000)] + ["<|im_end|>"]
    path = _write_gguf(
        tmp_path / "m.gguf",
        template=MIXTRAL,
        tokens=tokens,
        bos=1,
        eos=len(tokens) - 1,
        extra={"tokenizer.chat_template.tool_use": "{{ bos_token }}tools"},
    )
    t = ChatTemplate.from_gguf(path)
    assert (t.source, t.bos_token, t.eos_token, t.name) == (MIXTRAL, "<s>", "<|im_end|>", "m.gguf")
    assert ChatTemplate.from_gguf(path, variant="tool_use", name="M").render([]) == "<s>tools"
    assert read_token_texts(path, [2, 0, 5, 10**6]) == {0: "<unk>", 2: "</s>", 5: "t2"}


def test_from_gguf_without_a_template_or_tokens(tmp_path: Path) -> None:
    bare = _write_gguf(tmp_path / "bare.gguf", template=None, tokens=["a", "b"], bos=0, eos=None)
    with pytest.raises(
        ConfigError,
        match=r"bare.gguf has no chat template \(tokenizer.chat_template is not in its "
        r"metadata\); format the prompt yourself and call infer",
    ):
        ChatTemplate.from_gguf(bare)
    no_bos = _write_gguf(
        tmp_path / "nobos.gguf", template="{{ bos_token }}|{{ eos_token }}", tokens=["a"], bos=None, eos=7
    )
    assert ChatTemplate.from_gguf(no_bos).render([]) == "|", "ids outside the vocabulary give no text"
    with pytest.raises(ModelNotFoundError):
        ChatTemplate.from_gguf(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(InvalidModelError):
        ChatTemplate.from_gguf(tmp_path / "junk.gguf")


@pytest.mark.parametrize("vocab", ["llama-spm", "phi-3"])  # small vocabularies: GGUFReader is slow on big ones
def test_token_texts_match_the_gguf_package(llama_src: Path, vocab: str) -> None:
    gguf = pytest.importorskip("gguf")
    path = llama_src / "models" / f"ggml-vocab-{vocab}.gguf"
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["tokenizer.ggml.tokens"]
    n = len(field.data)
    ids = [0, 1, 2, n // 2, n - 1]
    expected = {i: bytes(field.parts[field.data[i]]).decode("utf-8") for i in ids}
    assert read_token_texts(path, ids) == expected


# -- the real GGUFs llcuda ships ------------------------------------------------------------------


def _shipped(name: str) -> Path:
    from llcuda.models import resolve_model

    return resolve_model(name).path


@pytest.mark.realmodel
def test_smollm2_gguf_template() -> None:
    from llcuda.models import SMOLLM2_MODEL

    gguf = pytest.importorskip("gguf")
    path = _shipped(SMOLLM2_MODEL)
    field = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"]
    source = bytes(field.parts[field.data[0]]).decode("utf-8")
    t = ChatTemplate.from_gguf(path)
    assert t.source == source
    assert (t.bos_token, t.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert t.render([{"role": "user", "content": "Hello"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    assert t.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
        add_generation_prompt=False,
    ) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )


@pytest.mark.realmodel
def test_gemma3_270m_base_gguf_has_no_template() -> None:
    from llcuda.models import DEFAULT_MODEL

    gguf = pytest.importorskip("gguf")
    path = _shipped(DEFAULT_MODEL)
    assert "tokenizer.chat_template" not in gguf.GGUFReader(str(path)).fields
    with pytest.raises(ConfigError, match="has no chat template"):
        ChatTemplate.from_gguf(path)
    assert read_token_texts(path, [1, 2]) == {1: "<eos>", 2: "<bos>"}

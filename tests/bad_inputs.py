"""The bad-input corpus: malformed jobs, each with what its one error must say.

Each case: (name, job input, fragments the error must contain). The fragments name the field or
the limit at fault, so a generic "bad request" fails the test. The endpoint that serves them runs
with MAX_PROMPT_TOKENS=1500, MAX_OUTPUT_TOKENS=512, MAX_N=4, MAX_REQUEST_BYTES=100000,
STRUCTURED_OUTPUT_TIMEOUT=2 and a 2048-token context (MAX_MODEL_LEN).
"""

from __future__ import annotations

HF_TOKEN = "hf_tpworkerTestSecretValue123456"
API_KEY = "rpa_tpworkerTestApiKey7890ABCDEF"
LIMITS = {
    "MAX_PROMPT_TOKENS": "1500",
    "MAX_OUTPUT_TOKENS": "512",
    "MAX_N": "4",
    "MAX_REQUEST_BYTES": "100000",
    "STRUCTURED_OUTPUT_TIMEOUT": "2",
}
# Regexes of nested quantifiers: each token they allow costs more than the last (minutes of the engine's
# time in vLLM 0.32); the worker refuses each once its check passes STRUCTURED_OUTPUT_TIMEOUT.
COSTLY = "((a*)*){50}b"
COSTLY_TOO = "((b*)*){50}a"
NO_STRING = "root ::= root root"  # a grammar no finite text matches: vLLM answered "Internal server error"

LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 260  # ~2600 tokens: beyond the context
MEDIUM_TEXT = "The quick brown fox jumps over the lazy dog. " * 170  # ~1700 tokens: over MAX_PROMPT_TOKENS


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def sampling(**params) -> dict:
    return {"prompt": "Hi", "sampling_params": params}


def chat(**body) -> dict:
    return {
        "openai_route": "/v1/chat/completions",
        "openai_input": {
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            **body,
        },
    }


def completion(**body) -> dict:
    return {
        "openai_route": "/v1/completions",
        "openai_input": {"model": "SmolLM2-135M-Instruct", "prompt": "Hi", "max_tokens": 4, **body},
    }


USER = [{"role": "user", "content": "Hi"}]

# Native form: worker-vllm's {"prompt" | "messages", "sampling_params", ...}
NATIVE = [
    ("input is a string", "hello", ["input", "JSON object"]),
    ("input is a list", ["hello"], ["input", "JSON object"]),
    ("input is a number", 5, ["input", "JSON object"]),
    ("input is empty", {}, ["prompt", "messages"]),
    ("prompt and messages", {"prompt": "Hi", "messages": USER}, ["exactly one"]),
    ("prompt is a number", {"prompt": 123}, ["prompt"]),
    ("prompt is a list", {"prompt": ["Hi"]}, ["prompt"]),
    ("prompt is an object", {"prompt": {"text": "Hi"}}, ["prompt"]),
    ("prompt is a boolean", {"prompt": True}, ["prompt"]),
    ("prompt is null", {"prompt": None}, ["prompt", "messages"]),
    ("prompt is empty", {"prompt": ""}, ["prompt"]),
    ("messages is empty", {"messages": []}, ["messages", "at least one"]),
    ("messages is a string", {"messages": "Hi"}, ["messages"]),
    ("message is null", {"messages": [None]}, ["messages[0]"]),
    ("message has an unknown role", {"messages": [{"role": "wizard", "content": "Hi"}]}, ["wizard", "Accepted roles"]),
    ("message has no role", {"messages": [{"content": "Hi"}]}, ["messages[0].role"]),
    ("message content is a number", {"messages": [{"role": "user", "content": 5}]}, ["messages[0].content"]),
    ("user message without content", {"messages": [{"role": "user"}]}, ["messages[0].content", "required"]),
    (
        "tool message without tool_call_id",
        {"messages": [*USER, {"role": "tool", "content": "42"}]},
        ["messages[1].tool_call_id", "required"],
    ),
    (
        "message content has a lone surrogate",
        {"messages": [{"role": "user", "content": "Hi \ud800"}]},
        ["messages[0].content", "surrogate"],
    ),
    ("prompt has a lone surrogate", {"prompt": "Hi \udfff there"}, ["prompt", "surrogate"]),
    ("sampling_params is a string", {"prompt": "Hi", "sampling_params": "hot"}, ["sampling_params"]),
    ("sampling_params is null", {"prompt": "Hi", "sampling_params": None}, ["sampling_params"]),
    ("temperature is text", sampling(temperature="hot"), ["sampling_params.temperature"]),
    ("temperature is negative", sampling(temperature=-1), ["temperature"]),
    ("temperature is NaN", sampling(temperature=float("nan")), ["sampling_params.temperature", "finite"]),
    ("temperature is infinite", sampling(temperature=float("inf")), ["sampling_params.temperature", "finite"]),
    ("top_p above 1", sampling(top_p=2), ["top_p"]),
    ("top_p is 0", sampling(top_p=0), ["top_p"]),
    ("top_k is -5", sampling(top_k=-5), ["top_k"]),
    ("max_tokens is negative", sampling(max_tokens=-1), ["max_tokens"]),
    ("max_tokens is 0", sampling(max_tokens=0), ["max_tokens"]),
    ("max_tokens beyond 64 bits", sampling(max_tokens=10**30), ["sampling_params.max_tokens", "64-bit"]),
    ("max_tokens is a huge float", sampling(max_tokens=1e30), ["max_tokens"]),
    ("max_tokens is text", sampling(max_tokens="ten"), ["sampling_params.max_tokens"]),
    ("max_tokens over the limit", sampling(max_tokens=600), ["max_tokens", "512", "MAX_OUTPUT_TOKENS"]),
    ("n is 0", sampling(n=0), ["n"]),
    ("n over the limit", sampling(n=1000), ["sampling_params.n", "MAX_N"]),
    ("n is text", sampling(n="two"), ["sampling_params.n"]),
    ("seed beyond 64 bits", sampling(seed=2**70), ["sampling_params.seed", "64-bit"]),
    ("stop is a number", sampling(stop=5), ["sampling_params.stop"]),
    ("stop is a list of numbers", sampling(stop=[1, 2]), ["sampling_params.stop"]),
    ("logprobs over the limit", sampling(logprobs=1000), ["logprobs", "20"]),
    ("presence_penalty out of range", sampling(presence_penalty=5), ["presence_penalty"]),
    ("repetition_penalty is 0", sampling(repetition_penalty=0), ["repetition_penalty"]),
    ("unknown sampling parameter", sampling(temprature=0.5), ["temprature", "Accepted"]),
    ("unknown top-level field", {"promt": "Hi"}, ["promt", "Accepted fields"]),
    ("chat template in the job", {"messages": USER, "chat_template": "{{ 'x' }}"}, ["chat_template"]),
    ("stream is a list", {"prompt": "Hi", "stream": [1]}, ["stream"]),
    ("max_batch_size is 0", {"prompt": "Hi", "max_batch_size": 0}, ["max_batch_size"]),
    (
        "batch_size_growth_factor below 1",
        {"prompt": "Hi", "batch_size_growth_factor": 0.5},
        ["batch_size_growth_factor"],
    ),
    ("apply_chat_template is a list", {"prompt": "Hi", "apply_chat_template": []}, ["apply_chat_template"]),
    ("prompt beyond the context", {"prompt": LONG_TEXT}, ["prompt", "2048"]),
    ("prompt over the limit", {"prompt": MEDIUM_TEXT}, ["prompt", "1500", "MAX_PROMPT_TOKENS"]),
    (
        "messages over the limit",
        {"messages": [{"role": "user", "content": MEDIUM_TEXT}]},
        ["messages", "MAX_PROMPT_TOKENS"],
    ),
    ("input over the byte limit", {"prompt": "x" * 150_000}, ["input", "MAX_REQUEST_BYTES"]),
    ("deeply nested sampling_params", {"prompt": "Hi", "sampling_params": nested(100)}, ["nested", "64"]),
    (
        "invalid JSON schema for structured output",
        sampling(structured_outputs={"json": {"type": "nonsense"}}),
        ["sampling_params.structured_outputs", "nonsense"],
    ),
    ("structured output is a number", sampling(structured_outputs=5), ["sampling_params.structured_outputs"]),
    (
        "regex too costly to check",
        sampling(structured_outputs={"regex": COSTLY}, max_tokens=256),
        ["sampling_params.structured_outputs.regex", "STRUCTURED_OUTPUT_TIMEOUT=2 s", "nested quantifiers"],
    ),
    (
        "grammar that accepts no token",
        sampling(structured_outputs={"grammar": NO_STRING}),
        ["sampling_params.structured_outputs.grammar", "accepts no token"],
    ),
    (
        "empty choice list",
        sampling(structured_outputs={"choice": []}),
        ["sampling_params.structured_outputs", "empty"],
    ),
]

LOCAL_FILE = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]
METADATA_URL = "http://169.254.169.254/latest/meta-data/"  # a cloud's instance metadata service
METADATA = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": METADATA_URL}}]}]
NATIVE += [
    ("model names a path", {"prompt": "Hi", "model": "/etc/passwd"}, ["model", "/etc/passwd", "not served"]),
    (
        "allowed token id out of the vocabulary",
        sampling(allowed_token_ids=[999999]),
        ["sampling_params.allowed_token_ids", "out-of-vocab"],
    ),
    ("content part with a local file url", {"messages": LOCAL_FILE}, ["messages", "not a multimodal model"]),
]

# OpenAI form: {"openai_route", "openai_input"}, what RunPod's /openai/v1 gateway sends.
OPENAI = [
    ("unknown route", {"openai_route": "/v1/embed", "openai_input": {}}, ["/v1/embed'", "Accepted"]),
    (
        "pooling route on a generative model",
        {"openai_route": "/v1/embeddings", "openai_input": {"input": "Hi"}},
        ["/v1/embeddings", "pooling"],
    ),
    ("route form: unknown route", {"route": "/v1/embed", "body": {}}, ["route", "/v1/embed'", "Accepted"]),
    ("route form: wrong method", {"route": "/tokenize", "body": {"prompt": "Hi"}, "method": "GET"}, ["method", "POST"]),
    ("route form: body is a list", {"route": "/tokenize", "body": [1]}, ["body"]),
    (
        "anthropic messages without max_tokens",
        {
            "route": "/v1/messages",
            "body": {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]},
        },
        ["max_tokens"],
    ),
    (
        "anthropic max_tokens over the limit",
        {
            "route": "/v1/messages",
            "body": {
                "model": "SmolLM2-135M-Instruct",
                "max_tokens": 600,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        },
        ["max_tokens", "MAX_OUTPUT_TOKENS"],
    ),
    ("route is a number", {"openai_route": 5, "openai_input": {}}, ["openai_route"]),
    # vLLM's server registers these only in its dev mode or with flags; a job cannot reach them
    ("route form: the sleep route", {"route": "/sleep", "body": {}}, ["/sleep'", "Accepted"]),
    ("route form: collective_rpc", {"route": "/collective_rpc", "body": {"method": "x"}}, ["/collective_rpc'"]),
    ("route form: scale_elastic_ep", {"route": "/scale_elastic_ep", "body": {}}, ["/scale_elastic_ep'"]),
    (
        "route form: load a LoRA adapter from a path",
        {"route": "/v1/load_lora_adapter", "body": {"lora_name": "x", "lora_path": "/etc"}},
        ["/v1/load_lora_adapter'", "Accepted"],
    ),
    ("route form: a path with ..", {"route": "/v1/../tokenize", "body": {"prompt": "Hi"}}, ["/v1/../tokenize'"]),
    ("route form: a route with a query", {"route": "/v1/models?x=1", "method": "GET"}, ["/v1/models?x=1'"]),
    ("model names a path", chat(model="../../etc/passwd"), ["../../etc/passwd", "does not exist"]),
    ("prompt token id out of the vocabulary", completion(prompt=[999999]), ["999999", "out of vocabulary"]),
    ("content part with a local file url", chat(messages=LOCAL_FILE), ["not a multimodal model"]),
    ("content part with a metadata url", chat(messages=METADATA), ["not a multimodal model"]),
    ("body is a string", {"openai_route": "/v1/chat/completions", "openai_input": "Hi"}, ["openai_input"]),
    ("body is missing", {"openai_route": "/v1/chat/completions"}, ["openai_input"]),
    ("field beside the route", {**chat(), "extra": 1}, ["extra"]),
    ("messages missing", {"openai_route": "/v1/chat/completions", "openai_input": {"model": "x"}}, ["messages"]),
    ("messages empty", chat(messages=[]), ["empty conversation", "at least one message"]),
    ("unknown role", chat(messages=[{"role": "wizard", "content": "Hi"}]), ["wizard"]),
    ("unknown model", chat(model="gpt-7"), ["gpt-7"]),
    ("temperature is text", chat(temperature="hot"), ["temperature"]),
    ("temperature is NaN", chat(temperature=float("nan")), ["temperature", "finite"]),
    ("max_tokens is negative", chat(max_tokens=-1), ["max_tokens"]),
    ("max_tokens beyond the context", chat(max_tokens=100000), ["100000"]),
    ("max_tokens over the limit", chat(max_tokens=600), ["max_tokens", "MAX_OUTPUT_TOKENS"]),
    ("n over the limit", chat(n=1000), ["n", "MAX_N"]),
    ("top_logprobs over the limit", chat(logprobs=True, top_logprobs=1000), ["logprobs"]),
    (
        "invalid JSON schema",
        chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
        ["response_format", "nonsense"],
    ),
    ("unknown response_format", chat(response_format={"type": "xml"}), ["response_format"]),
    (
        "regex too costly to check",
        chat(structured_outputs={"regex": COSTLY_TOO}, max_tokens=256),
        ["structured_outputs.regex", "STRUCTURED_OUTPUT_TIMEOUT=2 s"],
    ),
    (
        "streamed grammar that accepts no token",
        chat(structured_outputs={"grammar": NO_STRING}, stream=True),
        ["structured_outputs.grammar", "accepts no token"],
    ),
    (
        "completion grammar that accepts no token",
        completion(structured_outputs={"grammar": "root ::= root root root"}),
        ["structured_outputs.grammar", "accepts no token"],
    ),
    ("chat template in the request", chat(chat_template="{{ 'x' }}"), ["TRUST_REQUEST_CHAT_TEMPLATE"]),
    ("tools malformed", chat(tools=[{"type": "function"}]), ["tools"]),
    (
        "messages over the prompt limit",
        chat(messages=[{"role": "user", "content": MEDIUM_TEXT}]),
        ["MAX_PROMPT_TOKENS"],
    ),
    ("completion prompt missing", {"openai_route": "/v1/completions", "openai_input": {"model": "x"}}, ["prompt"]),
    ("completion prompt is an object", completion(prompt={"a": 1}), ["prompt"]),
    ("completion prompt beyond the context", completion(prompt=LONG_TEXT), ["2048"]),
    ("completion prompt over the limit", completion(prompt=MEDIUM_TEXT), ["MAX_PROMPT_TOKENS"]),
    ("completion seed beyond 64 bits", completion(seed=2**70), ["seed", "64-bit"]),
]

CASES = [("native: " + name, job, expect) for name, job, expect in NATIVE] + [
    ("openai: " + name, job, expect) for name, job, expect in OPENAI
]

"""Refusals in the exact shapes OpenAI and Azure OpenAI send them.

A client's error handling is only tested if the simulator's errors look like the real
ones: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` and Azure's gateway
``{"error": {"code", "message"}}`` (its refusals before a request reaches the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ApiError:
    """One refusal: the HTTP status and the body fields, as the provider words them."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    azure: bool = False  # Azure's gateway shape: {"error": {"code", "message"}}

    def body(self) -> dict[str, Any]:
        """The JSON body of the refusal."""
        if self.azure:
            return {"error": {"code": self.code or str(self.status), "message": self.message}}
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def unrecognized(names: list[str]) -> ApiError:
    """OpenAI's answer to top-level arguments it does not know (``top_k``, ``repeat_penalty``)."""
    if len(names) == 1:
        return ApiError(400, f"Unrecognized request argument supplied: {names[0]}")
    return ApiError(400, f"Unrecognized request arguments supplied: {', '.join(names)}")


def unknown_parameter(param: str) -> ApiError:
    """A key OpenAI does not know inside an argument (``response_format.schema``)."""
    return ApiError(400, f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")


def missing(param: str) -> ApiError:
    return ApiError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


_ARTICLE = {
    "string": "a string",
    "number": "a decimal",
    "integer": "an integer",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


def json_type(value: Any) -> str:
    """The JSON Schema type name of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def invalid_type(param: str, expected: list[str], value: Any) -> ApiError:
    wanted = [_ARTICLE[t] for t in expected if t != "null"] or ["null"]
    what = wanted[0] if len(wanted) == 1 else "one of " + " or ".join(wanted)
    got = _ARTICLE[json_type(value)]
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {what}, but got {got} instead.",
        param=param,
        code="invalid_type",
    )


def invalid_value(param: str, value: Any, supported: list[str]) -> ApiError:
    quoted = [f"'{s}'" for s in supported]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
    return ApiError(
        400,
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        param=param,
        code="invalid_value",
    )


def out_of_range(param: str, value: float, bound: float, above: bool) -> ApiError:
    kind = "integer" if isinstance(value, int) else "decimal"
    side, op = ("above_max", "<=") if above else ("below_min", ">=")
    word = "above maximum" if above else "below minimum"
    return ApiError(
        400,
        f"Invalid '{param}': {kind} {word} value. Expected a value {op} {bound:g}, "
        f"but got {value:g} instead.",
        param=param,
        code=f"{kind}_{side}_value",
    )


def empty_array(param: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead.",
        param=param,
        code="empty_array",
    )


NOT_JSON = ApiError(
    400,
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)",
)
NO_MODEL = ApiError(400, "you must provide a model parameter")
NO_KEY = ApiError(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    "a username. You can obtain an API key from https://platform.openai.com/account/api-keys.",
)
# OpenAI echoes a masked key here; the simulator never echoes any part of it.
BAD_KEY = ApiError(
    401,
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys.",
    code="invalid_api_key",
)
AZURE_NO_KEY = ApiError(
    401,
    "Access denied due to missing subscription key. Make sure to include subscription key "
    "when making requests to an API.",
    code="401",
    azure=True,
)
AZURE_BAD_KEY = ApiError(
    401,
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API endpoint "
    "for your resource.",
    code="401",
    azure=True,
)
AZURE_NOT_FOUND = ApiError(404, "Resource not found", code="404", azure=True)
AZURE_BAD_VERSION = ApiError(400, "API version not supported", code="BadRequest", azure=True)
AZURE_NO_DEPLOYMENT = ApiError(
    404,
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again.",
    code="DeploymentNotFound",
    azure=True,
)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )

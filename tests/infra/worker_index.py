"""`python -m tests.infra.worker_index APP_DIR`: index a function app with the Python worker's own code.

It does what the worker does at start-up (load the binding registry, import `function_app.py`,
validate every function's bindings against its signature) and prints, as JSON, the function
metadata the worker would send the host. A function the worker refuses ends it with the worker's
own error. Run in a subprocess, with only the app settings in the environment, as in Azure.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

from azure_functions_runtime import functions, loader
from azure_functions_runtime.bindings.meta import load_binding_registry
from azure_functions_runtime.http_v2 import HttpV2Registry


class _Message:
    """Stands in for a generated gRPC message: indexing only builds these and reads fields back."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class _BindingInfo(_Message):
    # The protobuf enum values of BindingInfo.Direction and BindingInfo.DataType.
    in_, out, inout = 0, 1, 2
    undefined, string, binary, stream = 0, 1, 2, 3


PROTOS = types.SimpleNamespace(BindingInfo=_BindingInfo, RpcFunctionMetadata=_Message, RpcRetryOptions=_Message)


def index(app_dir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(app_dir))
    load_binding_registry()
    indexed = loader.index_function_app(str(app_dir / "function_app.py"))
    metadata, _logs = loader.process_indexed_function(PROTOS, functions.Registry(), indexed, str(app_dir))
    return {
        "functions": [{"name": m.name, "bindings": [json.loads(raw) for raw in m.raw_bindings]} for m in metadata],
        "http_v2": HttpV2Registry.http_v2_enabled(),
    }


if __name__ == "__main__":
    json.dump(index(Path(sys.argv[1]).resolve()), sys.stdout)

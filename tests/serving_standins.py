"""Stand-ins for `tensorflow_model_server`, which cannot be installed here (no network but the package registries).

`SignatureRunner` does what TF Serving does with a SavedModel: loads it with
the TF1 loader (tag `serve`), reads the SignatureDefs, and runs a signature
by its tensor names, feeding the request tensors without checking their
shapes (the graph's own checks must catch bad input, as under TF Serving).

`GrpcStandIn` serves it through the real `PredictionService` gRPC stubs of
`tensorflow-serving-api`; `RestStandIn` through TF Serving's REST API
(`POST /v1/models/NAME[/versions/V]:predict`, `instances` / `inputs` JSON,
`{"b64": ...}` for DT_STRING inputs, `{"error": ...}` answers). Both listen
on 127.0.0.1 only, on a free port, in daemon threads.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import shutil
import tempfile
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2


class SignatureRunner:
    """A SavedModel loaded with `tf.compat.v1.saved_model.loader.load`, run by tensor names."""

    def __init__(self, export_dir: str):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(
                self.session, ["serve"], export_dir)
        self.signatures = dict(self.meta_graph.signature_def)
        self._callables = {}
        self._lock = threading.Lock()

    def run(self, signature_name: str, feeds: dict) -> dict:
        """{output name: ndarray} of a signature fed {input name: ndarray}.

        Raises tf.errors.OpError (InvalidArgument for bad input) as the
        session does, and KeyError for an unknown signature.
        """
        sig = self.signatures[signature_name]
        names = sorted(feeds)
        outputs = sorted(sig.outputs)
        key = (signature_name, tuple(names))
        with self._lock:
            fn = self._callables.get(key)
            if fn is None:
                # CallableOptions feed by tensor name, as TF Serving's Session::Run
                # does; Session.run would check shapes in Python first.
                options = config_pb2.CallableOptions()
                options.feed.extend(sig.inputs[n].name for n in names)
                options.fetch.extend(sig.outputs[n].name for n in outputs)
                fn = self.session._make_callable_from_options(options)
                self._callables[key] = fn
        values = fn(*[feeds[n] for n in names])
        return dict(zip(outputs, values))


def _check_inputs(sig, given) -> str | None:
    """TF Serving's check that a request names exactly the signature's inputs."""
    expected, got = set(sig.inputs), set(given)
    if expected != got:
        return (f"input size does not match signature: {len(got)}!={len(expected)} "
                f"len({{{', '.join(sorted(got))}}}) != len({{{', '.join(sorted(expected))}}})")
    return None


# ==================================================================================
# gRPC

class GrpcStandIn:
    """A PredictionService on 127.0.0.1 for one model name and one SavedModel."""

    def __init__(self, export_dir: str, model_name: str, version: int = 1):
        import grpc
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        runner = SignatureRunner(export_dir)
        self.runner = runner

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):
                if request.model_spec.name != model_name:
                    context.abort(grpc.StatusCode.NOT_FOUND,
                                  f"Servable not found for request: Latest({request.model_spec.name})")
                name = request.model_spec.signature_name or "serving_default"
                if name not in runner.signatures:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"Serving signature name: \"{name}\" not found in signature def")
                problem = _check_inputs(runner.signatures[name], request.inputs)
                if problem:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                try:
                    outputs = runner.run(name, feeds)
                except tf.errors.OpError as err:
                    context.abort(grpc.StatusCode(_grpc_code(err.error_code)), err.message)
                response = predict_pb2.PredictResponse()
                response.model_spec.name = model_name
                response.model_spec.signature_name = name
                response.model_spec.version.value = version
                wanted = set(request.output_filter) or set(outputs)
                for key, value in outputs.items():
                    if key in wanted:
                        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
                return response

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


def _grpc_code(tf_code: int):
    """tf.errors codes are the gRPC status codes (absl::StatusCode)."""
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


# ==================================================================================
# REST

_NP_DTYPES = {tf.uint8.as_datatype_enum: np.uint8, tf.float32.as_datatype_enum: np.float32,
              tf.int32.as_datatype_enum: np.int32, tf.int64.as_datatype_enum: np.int64}


def _json_value(value, dtype_enum: int, name: str):
    """A request value as TF Serving's JSON parser reads it for the input's dtype."""
    if dtype_enum == tf.string.as_datatype_enum:
        def decode(v):
            if isinstance(v, list):
                return [decode(x) for x in v]
            if isinstance(v, dict):
                if set(v) != {"b64"}:
                    raise ValueError(f"JSON object for input {name!r} must be {{\"b64\": ...}}")
                return base64.b64decode(v["b64"], validate=True)
            if isinstance(v, str):
                return v.encode()
            raise ValueError(f"input {name!r} is DT_STRING; got JSON {type(v).__name__}")
        return np.array(decode(value), dtype=object)
    np_dtype = _NP_DTYPES[dtype_enum]
    array = np.array(value)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ValueError(f"input {name!r}: JSON values are not numbers of one nested shape")
    if np.issubdtype(np_dtype, np.integer):
        info = np.iinfo(np_dtype)
        if array.dtype.kind == "f" or (array.size and (array.min() < info.min or array.max() > info.max)):
            raise ValueError(f"input {name!r}: JSON Value is not of expected type: "
                             f"{np.dtype(np_dtype).name}")
    return array.astype(np_dtype)


def _to_json(array: np.ndarray):
    if array.dtype == object:
        return [_to_json(a) for a in array] if array.ndim else {"b64": base64.b64encode(array.item()).decode()}
    return array.tolist()


class RestStandIn:
    """TF Serving's REST predict API on 127.0.0.1 for one model name."""

    def __init__(self, export_dir: str, model_name: str, version: int = 1):
        runner = SignatureRunner(export_dir)
        self.runner = runner
        prefix = f"/v1/models/{model_name}"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):   # quiet tests
                pass

            def _answer(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") == prefix:
                    self._answer(200, {"model_version_status": [
                        {"version": str(version), "state": "AVAILABLE",
                         "status": {"error_code": "OK", "error_message": ""}}]})
                else:
                    self._answer(404, {"error": f"Could not find a model at {self.path}"})

            def do_POST(self):
                path = self.path
                if not path.endswith(":predict"):
                    return self._answer(404, {"error": f"Malformed request: POST {path}"})
                base = path[:-len(":predict")]
                if base not in (prefix, f"{prefix}/versions/{version}"):
                    return self._answer(404, {"error": f"Servable not found for request: {base}"})
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    request = json.loads(self.rfile.read(length) or b"null")
                    status, payload = self._predict(request)
                except (ValueError, TypeError, KeyError) as err:
                    status, payload = 400, {"error": str(err)}
                self._answer(status, payload)

            def _predict(self, request):
                if not isinstance(request, dict):
                    raise ValueError("JSON Parse error: request must be a JSON object")
                name = request.get("signature_name", "serving_default")
                if name not in runner.signatures:
                    return 400, {"error": f"Serving signature name: \"{name}\" not found in signature def"}
                sig = runner.signatures[name]
                row = "instances" in request
                if row == ("inputs" in request):
                    raise ValueError("JSON request must have exactly one of 'instances' or 'inputs'")
                if row:
                    instances = request["instances"]
                    if not isinstance(instances, list):
                        raise ValueError("'instances' must be a JSON list")
                    if len(sig.inputs) == 1 and not (instances and isinstance(instances[0], dict)):
                        columns = {next(iter(sig.inputs)): instances}
                    else:
                        if not all(isinstance(i, dict) for i in instances):
                            raise ValueError("each of 'instances' must be an object of named inputs")
                        keys = set(instances[0]) if instances else set(sig.inputs)
                        columns = {k: [i.get(k) for i in instances] for k in keys}
                else:
                    columns = request["inputs"]
                    if not isinstance(columns, dict):
                        columns = {next(iter(sig.inputs)): columns}
                problem = _check_inputs(sig, columns)
                if problem:
                    return 400, {"error": problem}
                feeds = {}
                for key, value in columns.items():
                    if row and not request["instances"]:
                        # An empty 'instances' list: an empty batch of the input's type.
                        dims = [0] + [max(d.size, 0) for d in sig.inputs[key].tensor_shape.dim[1:]]
                        feeds[key] = np.zeros(dims, _NP_DTYPES.get(sig.inputs[key].dtype, object))
                    else:
                        feeds[key] = _json_value(value, sig.inputs[key].dtype, key)
                try:
                    outputs = runner.run(name, feeds)
                except tf.errors.OpError as err:
                    return 400, {"error": err.message}
                if row:
                    keys = sorted(outputs)
                    n = len(next(iter(outputs.values())))
                    if len(keys) == 1:
                        return 200, {"predictions": _to_json(outputs[keys[0]])}
                    return 200, {"predictions": [{k: _to_json(outputs[k][i]) for k in keys}
                                                 for i in range(n)]}
                if len(outputs) == 1:
                    return 200, {"outputs": _to_json(next(iter(outputs.values())))}
                return 200, {"outputs": {k: _to_json(v) for k, v in outputs.items()}}

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ==================================================================================
# One exported model per test process

@functools.lru_cache(maxsize=None)
def shared_export():
    """(model, version folder): an MGCAM whose BatchNorm statistics are not the
    identity, exported once per test process and shared by the test modules
    (exporting costs several seconds)."""
    import keras

    from mgcam_tf.serving import export
    from mgcam_tf.modeling import models

    keras.utils.set_random_seed(0)
    model = models.model_from_config(models.model_config(5))
    perturb_batch_norm(model)
    base = tempfile.mkdtemp(prefix="mgcam-shared-export-")
    atexit.register(shutil.rmtree, base, True)
    return model, export.export_saved_model(model, base, metadata={"model": {"num_ids": 5}})


def perturb_batch_norm(model, seed: int = 0) -> None:
    """Moving statistics away from (0, 1), so that a test sees them matter."""
    rng = np.random.default_rng(seed)
    for v in model.non_trainable_variables:
        if "moving_mean" in v.path:
            v.assign(rng.normal(0, 0.1, v.shape).astype("float32"))
        elif "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))

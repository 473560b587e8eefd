"""Clients of an export served by TF Serving: REST (JSON) and gRPC (PredictRequest).

Both clients have the same two calls, one per signature of `mgcam_tf.serving.export`:

- `predict(image, mask)`: uint8 [N, 160, 64, 3] and [N, 160, 64, 1] arrays
  -> `serving_default`;
- `predict_encoded(image_files, mask_files)`: encoded files (bytes; a mask
  may be b"" for "no mask") -> `serving_bytes`, resized by the server;
- `predict_images(image_files)`: encoded files alone -> `serving_image_bytes`
  (exports with the mask model in the graph make the masks themselves);

and return {"embedding": float32 [N, D], "attention": float32 [N, 40, 16, 1]}
(no "attention" for an MSCAN export). Large inputs are sent in requests of
`batch_size` images. A refused request raises `ServingError`, whose `code`
is the gRPC status name ("INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", ...)
and whose message is the server's.

REST (`RestClient`, port 8501): `POST /v1/models/NAME[/versions/V]:predict`
with the row format `{"signature_name": ..., "instances": [{"image": ...,
"mask": ...}, ...]}`; bytes go as `{"b64": "..."}`. Only the standard library.

gRPC (`GrpcClient`, port 8500): `PredictionService/Predict` of
`tensorflow-serving-api` (install it with `pip install --no-deps
tensorflow-serving-api==2.21.0 grpcio`: it declares a dependency on the full
`tensorflow` wheel, which would clash with `tensorflow-cpu`).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Optional, Sequence

import numpy as np

# conventions imports no TensorFlow: the client stays light.
from mgcam_tf.conventions import (SIGNATURE_BYTES, SIGNATURE_DEFAULT,  # noqa: F401
                                  SIGNATURE_IMAGE_BYTES, SIGNATURE_IMAGE_BYTES_DETAILS)
from mgcam_tf.errors import ConfigError, DataError

DEFAULT_MODEL_NAME = "mgcam"
DEFAULT_REST_URL = "http://localhost:8501"
DEFAULT_GRPC_TARGET = "localhost:8500"
# TF Serving accepts requests up to 2 GB; gRPC clients refuse answers over
# 4 MB unless told otherwise.
_GRPC_MESSAGE_LIMIT = 1 << 30
_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 412: "FAILED_PRECONDITION",
               500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class ServingError(DataError):
    """The server refused or failed a request; `code` is the gRPC status name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.server_message = message


def _check_pixels(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Client-side check of the serving_default contract (the server checks it too)."""
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim == 3:
        image, mask = image[None], mask[None]
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[1:] != (160, 64, 3):
        raise ConfigError(f"image must be uint8 [N, 160, 64, 3], got {image.dtype} {image.shape}")
    if mask.dtype != np.uint8 or mask.ndim != 4 or mask.shape[1:] != (160, 64, 1) \
            or len(mask) != len(image):
        raise ConfigError(f"mask must be uint8 [N, 160, 64, 1] like image, got "
                          f"{mask.dtype} {mask.shape}")
    if len(image) == 0:
        raise ConfigError("no image to send (empty batch)")
    return image, mask


def _chunks(n: int, batch_size: int):
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _concat(parts: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _Client:
    """What both protocols share: batching and the two signatures."""

    batch_size: int

    def send(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request: `inputs` ({name: array}, uint8/float arrays or object arrays
        of bytes) sent as they are, without client-side checks, to `signature`.

        Returns {output name: float32 array}; raises ServingError.
        """
        raise NotImplementedError

    def predict(self, image: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """serving_default on uint8 image [N, 160, 64, 3] and mask [N, 160, 64, 1]
        (a single [160, 64, C] pair is a batch of one)."""
        image, mask = _check_pixels(image, mask)
        return _concat([self.send(SIGNATURE_DEFAULT, {"image": image[a:b], "mask": mask[a:b]})
                        for a, b in _chunks(len(image), self.batch_size)])

    def predict_encoded(self, image_files: Sequence[bytes],
                        mask_files: Optional[Sequence[bytes]] = None) -> dict[str, np.ndarray]:
        """serving_bytes on encoded files (JPEG/PNG/BMP/GIF, any size).

        mask_files: one per image; b"" (or None for all) means no mask.
        """
        image_files = [bytes(f) for f in image_files]
        mask_files = [b""] * len(image_files) if mask_files is None else [bytes(m) for m in mask_files]
        if len(mask_files) != len(image_files):
            raise ConfigError(f"{len(image_files)} images but {len(mask_files)} masks")
        if not image_files:
            raise ConfigError("no image to send (empty batch)")
        return _concat([self.send(SIGNATURE_BYTES, {
            "image_bytes": np.array(image_files[a:b], dtype=object),
            "mask_bytes": np.array(mask_files[a:b], dtype=object)})
            for a, b in _chunks(len(image_files), self.batch_size)])

    def predict_images(self, image_files: Sequence[bytes], *,
                       details: bool = False) -> dict[str, np.ndarray]:
        """serving_image_bytes on encoded files alone: the server makes the masks
        (exports made with the mask model in the graph, mgcam-export's default).

        details: also return `attention` (MGCAM) and `mask_png` (each image's
        mask, a PNG of its own size) from serving_image_bytes_details.
        """
        image_files = [bytes(f) for f in image_files]
        if not image_files:
            raise ConfigError("no image to send (empty batch)")
        signature = SIGNATURE_IMAGE_BYTES_DETAILS if details else SIGNATURE_IMAGE_BYTES
        return _concat([self.send(signature, {
            "image_bytes": np.array(image_files[a:b], dtype=object)})
            for a, b in _chunks(len(image_files), self.batch_size)])


class RestClient(_Client):
    """TF Serving's REST API.

    Args:
      url: the server, e.g. "http://localhost:8501".
      model_name: the served model's name (`--model_name` of the server).
      version: a version number, or None for the latest.
      timeout: seconds per request.
      batch_size: images per request.
    """

    def __init__(self, url: str = DEFAULT_REST_URL, model_name: str = DEFAULT_MODEL_NAME,
                 version: Optional[int] = None, timeout: float = 30.0, batch_size: int = 64):
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.batch_size = batch_size

    @property
    def predict_url(self) -> str:
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.url}/v1/models/{self.model_name}{version}:predict"

    def _request(self, url: str, body: Optional[bytes]) -> dict:
        request = urllib.request.Request(
            url, data=body, method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text.strip() or err.reason
            raise ServingError(_HTTP_CODES.get(err.code, f"HTTP_{err.code}"), message) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServingError("UNAVAILABLE", f"cannot reach {url} ({reason})") from None
        except ValueError as err:
            raise ServingError("INTERNAL", f"{url} answered with invalid JSON ({err})") from None

    def status(self) -> dict:
        """GET /v1/models/NAME: the versions and their states."""
        return self._request(f"{self.url}/v1/models/{self.model_name}", None)

    def send(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        columns = {}
        for name, value in inputs.items():
            if value.dtype == object:
                columns[name] = [{"b64": base64.b64encode(v).decode("ascii")} for v in value]
            else:
                columns[name] = value.tolist()
        instances = [{name: columns[name][i] for name in columns} for i in range(n)]
        body = json.dumps({"signature_name": signature, "instances": instances}).encode()
        answer = self._request(self.predict_url, body)
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != n:
            raise ServingError("INTERNAL", f"{self.predict_url} answered without "
                               f"{n} 'predictions': {str(answer)[:200]}")
        if predictions and not isinstance(predictions[0], dict):
            # One output only: TF Serving drops the names in the row format.
            return {"embedding": np.asarray(predictions, np.float32)}
        return {k: np.asarray([p[k] for p in predictions], np.float32) for k in predictions[0]}


class GrpcClient(_Client):
    """TF Serving's gRPC PredictionService.

    Args:
      target: "host:port" of the server (8500 by default).
      model_name, version, timeout, batch_size: as for `RestClient`.
    """

    def __init__(self, target: str = DEFAULT_GRPC_TARGET, model_name: str = DEFAULT_MODEL_NAME,
                 version: Optional[int] = None, timeout: float = 30.0, batch_size: int = 64):
        try:
            import grpc
            from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        except ImportError as err:
            raise ConfigError(
                f"the gRPC client needs grpcio and tensorflow-serving-api ({err}); install them "
                "with `pip install grpcio` and `pip install --no-deps "
                "tensorflow-serving-api==2.21.0`") from None
        self._grpc = grpc
        self._predict_pb2 = predict_pb2
        self.target = target
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self.batch_size = batch_size
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", _GRPC_MESSAGE_LIMIT),
            ("grpc.max_receive_message_length", _GRPC_MESSAGE_LIMIT)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf  # tensorflow-serving-api's protos import it anyway

        request = self._predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = int(self.version)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as err:
            code = err.code().name if hasattr(err, "code") and err.code() else "UNKNOWN"
            details = err.details() if hasattr(err, "details") else str(err)
            if code == "UNAVAILABLE":
                details = f"cannot reach {self.target} ({details})"
            raise ServingError(code, details) from None
        return {k: tf.make_ndarray(v).astype(np.float32) for k, v in response.outputs.items()}


def make_client(protocol: str, server: str = "", **kwargs) -> _Client:
    """A RestClient ("rest") or GrpcClient ("grpc") for `server` (default localhost:8501/8500)."""
    if protocol == "rest":
        return RestClient(server or DEFAULT_REST_URL, **kwargs)
    if protocol == "grpc":
        return GrpcClient(server or DEFAULT_GRPC_TARGET, **kwargs)
    raise ConfigError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")

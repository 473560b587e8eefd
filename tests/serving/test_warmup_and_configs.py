"""The export's TF Serving warmup file, replayed; docs/serving's server config files, parsed."""


import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from mgcam_tf.serving import export

from serving_standins import shared_export
from harness import REPO

prediction_log_pb2 = pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")


def test_warmup_requests_cover_every_signature_and_run(tmp_path):
    version_dir = shared_export()[1]
    path = version_dir / export.METADATA_DIR / export.WARMUP_FILE
    assert path.is_file()
    assert export.read_metadata(version_dir)["warmup"] is True
    loaded = tf.saved_model.load(str(version_dir))
    seen = {}
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        signature = request.model_spec.signature_name
        inputs = {name: tf.constant(tf.make_ndarray(proto))
                  for name, proto in request.inputs.items()}
        # What TF Serving does with it at load time: run the signature.
        out = loaded.signatures[signature](**inputs)
        batch = int(next(iter(inputs.values())).shape[0])
        assert out["embedding"].shape == (batch, 128)
        assert np.isfinite(out["embedding"].numpy()).all()
        seen.setdefault(signature, []).append(batch)
    assert set(seen) == set(loaded.signatures)
    assert all(sorted(b) == list(export.WARMUP_BATCH_SIZES) for b in seen.values())


def test_models_config_parses_as_model_server_config():
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((REPO / "docs" / "serving" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "mgcam" and model.base_path == "/models/mgcam"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 1


def batching_parameters_class():
    """tensorflow.serving.BatchingParameters (session_bundle_config.proto).

    tensorflow-serving-api's wheel does not ship that proto's Python module,
    so it is declared here with the proto's own field names, numbers and
    types (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).
    """
    from google.protobuf import wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        wrappers_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    f = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config_mgcam_test.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    m = f.message_type.add(name="BatchingParameters")
    T = descriptor_pb2.FieldDescriptorProto
    for number, name, kind, type_name, label in (
            (1, "max_batch_size", T.TYPE_MESSAGE, ".google.protobuf.Int64Value", T.LABEL_OPTIONAL),
            (2, "batch_timeout_micros", T.TYPE_MESSAGE, ".google.protobuf.Int64Value", T.LABEL_OPTIONAL),
            (3, "max_enqueued_batches", T.TYPE_MESSAGE, ".google.protobuf.Int64Value", T.LABEL_OPTIONAL),
            (4, "num_batch_threads", T.TYPE_MESSAGE, ".google.protobuf.Int64Value", T.LABEL_OPTIONAL),
            (5, "thread_pool_name", T.TYPE_MESSAGE, ".google.protobuf.StringValue", T.LABEL_OPTIONAL),
            (6, "allowed_batch_sizes", T.TYPE_INT64, None, T.LABEL_REPEATED),
            (7, "pad_variable_length_inputs", T.TYPE_BOOL, None, T.LABEL_OPTIONAL)):
        field = m.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    pool.Add(f)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_config_parses_as_batching_parameters():
    params = text_format.Parse((REPO / "docs" / "serving" / "batching.config").read_text(),
                               batching_parameters_class()())
    assert params.max_batch_size.value == 64
    assert params.batch_timeout_micros.value > 0 and params.num_batch_threads.value >= 1
    sizes = list(params.allowed_batch_sizes)
    # TF Serving's rules: increasing, the last one equal to max_batch_size.
    assert sizes == sorted(sizes) and sizes[-1] == params.max_batch_size.value

"""The one line a command prints for a TensorFlow error names its cause."""

from mgcam_tf.cli.common import op_error_summary

GRAPH_ERROR = """Graph execution error:

Detected at node gradient_tape/mgcam_1/Conv2DBackpropFilter_1 defined at (most recent call last):
  File "tools/train.py", line 13, in <module>

  File "mgcam_tf/training/task.py", line 200, in train_step

Current CPU implementations do not yet support dilation rates larger than 1.
\t [[{{node gradient_tape/mgcam_1/Conv2DBackpropFilter_1}}]] [Op:__inference_step_8879]"""


def test_graph_error_is_cut_to_its_cause():
    assert op_error_summary(GRAPH_ERROR) == (
        "Current CPU implementations do not yet support dilation rates larger than 1.")


def test_eager_error_keeps_its_first_line():
    assert op_error_summary("/x/a.jpg; No such file or directory\nmore") == (
        "/x/a.jpg; No such file or directory")
    assert op_error_summary("") == ""

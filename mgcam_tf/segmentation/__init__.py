"""Binary body masks for person crops with MediaPipe BlazePose-full (the recipe is `graph_recipe.py`'s docstring).

MGCAM needs a mask for every image. The authors' FCN is not public, so this
module follows the recipe the masks in ../shared/data were made with:

1. decode the crop (JPEG with libjpeg's accurate integer IDCT, as OpenCV
   and PIL decode it; TensorFlow's default fast IDCT differs by a grey level
   here and there, which moves silhouettes: mean IoU 0.983 instead of 1);
2. letterbox it (black) into 256x256 with its longer side 256/1.15 px,
   resized as OpenCV does on uint8 (INTER_AREA when shrinking, INTER_LINEAR
   when growing, reproduced bit for bit in numpy), RGB scaled to [0, 1];
3. run `pose_landmark_full.tflite` and take `Identity_2`, [1,256,256,1] logits;
4. cut the letterbox off, resize the logits bilinearly (half-pixel centres)
   to the crop's size, body where logit > 0.

Every mask of `cuhk03_pair1/query_seg`, `market1501_mini` and `mars_mini`
comes out bit-identical (IoU 1.0). Near misses are far off: a float area
resize gives mean IoU 0.9995, TF's bilinear/antialiased resizing 0.98-0.99,
TF's area resize when growing 64x128 Market crops 0.92, nearest or area
resizing of the logits 0.97-0.99.

The model file is taken out of the `mediapipe==0.10.21` wheel (fetched with
pip, never installed: it pins protobuf < 5 against TF's >= 6.31) and checked
against its sha256. It runs on TensorFlow's `tf.lite.Interpreter`, which is
deprecated (its warning is silenced here); `ai-edge-litert` offers the same
interpreter without TensorFlow should TF drop it.

Speed: the resizes are a few gathers and float32/int32 blends per image in
numpy (no per-image TF graph), and `write_masks` runs one interpreter per
worker *thread*: TFLite's `invoke` and the TF decode/encode kernels release
the GIL (docs/PERFORMANCE.md has the figures), so threads use all cores without a
process pool's start-up cost (each process would import TensorFlow, several
seconds) or the hazards of forking a process whose TF runtime is running.
"""

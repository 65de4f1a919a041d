# Triton for GPU hosts: NVIDIA's NGC image plus what the Python-backend steps (decode,
# letterbox, NMS) import. The network runs on Triton's native onnxruntime backend there
# (model_repository/yolox_nano_onnx/config.pbtxt); locally it runs configs/cpu.pbtxt.
FROM nvcr.io/nvidia/tritonserver:24.08-py3
# numpy < 2: the Python backend returns empty tensors with numpy 2 (requirements/triton.txt pins
# the same for the local Triton).
# pyclipper: ppocr_v6's text-box expansion.
RUN pip install --no-cache-dir "numpy<2" "opencv-python-headless<4.12" "pyclipper==1.4.0"
# The library every model.py imports (decoding, resize policies, NMS, step calls).
COPY triton_models /opt/vision/triton_models
ENV PYTHONPATH=/opt/vision

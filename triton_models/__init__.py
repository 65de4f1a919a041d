"""The library every Triton Python model of model_repository/ imports: image decoding to an
IMAGE_STATUS, the resize policy of each network, NMS, and the calls of network steps.

It is one folder on the stubs' import path, not copied into the models: tools/local_triton.py
puts the repository on PYTHONPATH, deploy/triton.Dockerfile copies it into the image. It needs
only numpy, OpenCV and onnxruntime, the packages of Triton's own environment.
"""

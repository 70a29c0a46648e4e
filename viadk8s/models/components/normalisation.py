"""The pre-processor's normalisation (anomalib's default transform: ImageNet mean and standard
deviation), shared by the models whose augmentations or tests work in image colours on normalised
batches: DevNet's rotation fills its corners with black, DRA pastes its pseudo anomalies in [0, 1]
colours, InReaCh undoes it for its alignment test."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

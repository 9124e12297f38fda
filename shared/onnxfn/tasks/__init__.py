"""The imaging tasks: model tensors from decoded images, and answers (labels, masks) from model outputs."""

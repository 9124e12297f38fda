"""Payload codecs: bytes on the wire (images, DICOM, OIP JSON, multipart) to plain arrays and back."""

"""Reading item images for FVE: the bytes (hashed for the cache keys) and the decoded RGB image, with a
short reason instead of an exception when a file cannot be used (the caller writes a fallback)."""

import io
import os


def read_image_bytes(path):
    """``(bytes, None)`` or ``(None, reason)`` for a missing, unreadable or empty file."""
    if not path:
        return None, "no image path"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}" if os.path.exists(path) else "file not found"
    if not data:
        return None, "empty file"
    return data, None


def decode_image(path):
    """The RGB image at ``path``, or a string saying why it cannot be used."""
    from PIL import Image

    data, reason = read_image_bytes(path)
    if data is None:
        return reason
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        return f"not a decodable image: {e}"

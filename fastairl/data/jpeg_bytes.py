"""JPEG bytes on the CPU: the frame-header parser and the CPU decoder the JPEG backends share.

Why a module of its own: the ``nvjpeg`` backend uses both to route images nvJPEG rejects
(CMYK, non-JPEG files) to the CPU, and the ``dali`` backend reads image sizes from the
frame header before the decode (its crop windows need them). Neither backend should
import the other's loader for that. Moved out of ``nvjpeg_loader.py`` (issue #15);
``fastairl.data.nvjpeg_loader`` re-exports every name.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

# torchvision 0.29 warns on every decode call that its codecs are deprecated in favour of
# TorchCodec; one warning per image would drown the training log. The filter is scoped
# to that exact message.
warnings.filterwarnings("ignore", message=r".*image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)

__all__ = ["JpegHeader", "jpeg_header", "decode_on_cpu", "DecodeError"]

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE_SOF = {0xC2, 0xC6, 0xCA, 0xCE}


class DecodeError(RuntimeError):
    """No decoder could turn a sample's bytes into an RGB image."""


@dataclass(frozen=True)
class JpegHeader:
    """What the start-of-frame segment of a JPEG says."""

    height: int
    width: int
    components: int   # 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK
    progressive: bool


def jpeg_header(data: torch.Tensor | np.ndarray | bytes) -> JpegHeader | None:
    """Parse the frame header of a JPEG stream, or return None if it is not a JPEG.

    Used to send images nvJPEG is known to reject (4-component CMYK/YCCK, non-JPEG files)
    straight to the CPU decoder, instead of failing a whole GPU batch and retrying it.
    """
    if isinstance(data, (bytes, bytearray)):
        buf = memoryview(data)
    else:
        arr = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        buf = memoryview(np.ascontiguousarray(arr.reshape(-1), dtype=np.uint8))  # no copy for uint8 input
    if len(buf) < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    pos = 2
    n = len(buf)
    while pos + 4 <= n:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        if marker in _SOF_MARKERS:
            if pos + 10 > n:
                return None
            height = (buf[pos + 5] << 8) | buf[pos + 6]
            width = (buf[pos + 7] << 8) | buf[pos + 8]
            return JpegHeader(height, width, buf[pos + 9], marker in _PROGRESSIVE_SOF)
        if length < 2:
            return None
        pos += 2 + length
    return None


def decode_on_cpu(data: torch.Tensor) -> torch.Tensor:
    """Decode one image's bytes to ``(3, H, W)`` uint8 RGB on the CPU.

    torchvision (libjpeg-turbo) first; PIL second, which also reads the odd non-JPEG file
    stored under a .JPEG name and the rare JPEG variants libjpeg-turbo's strict mode
    refuses. Raises :class:`DecodeError` with both decoders' reasons if neither can.
    """
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB)
    except RuntimeError as e_tv:
        first = str(e_tv).splitlines()[-1] if str(e_tv) else type(e_tv).__name__
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
    except Exception as e_pil:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise DecodeError(f"torchvision: {first}; PIL: {type(e_pil).__name__}: {e_pil}") from None

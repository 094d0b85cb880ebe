"""MPEG-4 Part 2 and H.264 header parsing: the few bits FFmpeg decodes but does not expose.

The exact motion-compensated prediction of a P-VOP depends on ``vop_rounding_type`` (ISO/IEC
14496-2 §6.2.5), a bit PyAV does not expose, and whose value FFmpeg's encoder flips on every
P-VOP. We read it from the VOP header at the start of each packet. To find it we need
``vop_time_increment_resolution`` from the Video Object Layer (VOL) header, which sits in the
stream's extradata (MP4/MKV) or in-band before the first VOP (AVI, raw .m4v).

Only what the residual rebuild needs is parsed; fields we cannot handle exactly (quarter-pel,
sprites/GMC, interlace) are reported so the caller can refuse the stream.

Native mode (``native.py``) needs each H.264 picture's type before decoding, to plan on the
source's own I- and P-frames: it is the ``slice_type`` near the start of the first slice.
"""

from __future__ import annotations

from dataclasses import dataclass

VOL_START_CODE_RANGE = range(0x20, 0x30)  # video_object_layer_start_code 0x00000120..0x0000012F
VOP_START_CODE = 0xB6
VOP_TYPES = {0: "I", 1: "P", 2: "B", 3: "S"}  # S = sprite (GMC) VOP


class BitReader:
    """MSB-first bit reader over a bytes object."""

    def __init__(self, data: bytes, byte_offset: int = 0):
        self.data = data
        self.pos = byte_offset * 8

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3] if (self.pos >> 3) < len(self.data) else 0
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def skip(self, n: int) -> None:
        self.pos += n


@dataclass(frozen=True)
class VolHeader:
    """The Video Object Layer fields that matter for exact motion compensation."""

    time_increment_resolution: int
    time_increment_bits: int
    interlaced: bool
    quarter_sample: bool
    sprite_enable: int  # 0 none, 1 static, 2 GMC


@dataclass(frozen=True)
class VopHeader:
    """One Video Object Plane header: its coding type and the rounding bit of P-VOPs."""

    coding_type: str  # "I", "P", "B" or "S"
    coded: bool  # False: a "not coded" VOP, the decoder repeats the previous picture
    rounding_type: int  # 0 or 1; meaningful for P-VOPs only


def find_start_codes(data: bytes, code_filter) -> list[int]:
    """Byte offsets just after each 0x000001XX start code whose XX passes ``code_filter``."""
    offsets = []
    i = data.find(b"\x00\x00\x01")
    while i != -1 and i + 3 < len(data):
        if code_filter(data[i + 3]):
            offsets.append(i + 4)
        i = data.find(b"\x00\x00\x01", i + 3)
    return offsets


def parse_vol(data: bytes) -> VolHeader | None:
    """Parse the first VOL header found in ``data`` (extradata or a packet); None if absent."""
    offsets = find_start_codes(data, lambda c: c in VOL_START_CODE_RANGE)
    if not offsets:
        return None
    r = BitReader(data, offsets[0])
    r.skip(1)  # random_accessible_vol
    r.skip(8)  # video_object_type_indication
    verid = 1
    if r.read(1):  # is_object_layer_identifier
        verid = r.read(4)
        r.skip(3)  # video_object_layer_priority
    if r.read(4) == 0xF:  # aspect_ratio_info == extended PAR
        r.skip(16)
    if r.read(1):  # vol_control_parameters
        r.skip(2 + 1)  # chroma_format, low_delay
        if r.read(1):  # vbv_parameters
            r.skip(15 + 1 + 15 + 1 + 15 + 1 + 3 + 11 + 1 + 15 + 1)
    shape = r.read(2)
    if shape == 3 and verid != 1:  # grayscale shape extension
        r.skip(4)
    r.skip(1)  # marker
    resolution = r.read(16)
    r.skip(1)  # marker
    bits = max(1, (resolution - 1).bit_length())  # FFmpeg: av_log2(resolution - 1) + 1
    if r.read(1):  # fixed_vop_rate
        r.skip(bits)
    if shape != 0:  # only rectangular VOLs are produced by real encoders
        return VolHeader(resolution, bits, interlaced=False, quarter_sample=False, sprite_enable=0)
    r.skip(1 + 13 + 1 + 13 + 1)  # marker, width, marker, height, marker
    interlaced = bool(r.read(1))
    r.skip(1)  # obmc_disable
    sprite_enable = r.read(1 if verid == 1 else 2)
    quarter_sample = False
    if sprite_enable in (1, 2):
        # Sprite streams are refused by the caller; the remaining fields are not needed.
        return VolHeader(resolution, bits, interlaced, quarter_sample, sprite_enable)
    if verid != 1 and shape != 0:
        r.skip(1)
    if r.read(1):  # not_8_bit
        r.skip(4 + 4)
    if shape == 3:
        r.skip(3)
    if r.read(1):  # quant_type: custom matrices may follow
        for _ in range(2):  # load_intra_quant_mat, load_nonintra_quant_mat
            if r.read(1):
                for _ in range(64):
                    if r.read(8) == 0:
                        break
    if verid != 1:
        quarter_sample = bool(r.read(1))
    return VolHeader(resolution, bits, interlaced, quarter_sample, sprite_enable)


def parse_vop(packet: bytes, vol: VolHeader) -> VopHeader | None:
    """Parse the first VOP header in a packet; None if the packet holds no VOP."""
    offsets = find_start_codes(packet, lambda c: c == VOP_START_CODE)
    if not offsets:
        return None
    r = BitReader(packet, offsets[0])
    coding_type = VOP_TYPES[r.read(2)]
    while r.read(1):  # modulo_time_base: a run of ones closed by a zero
        pass
    r.skip(1)  # marker
    r.skip(vol.time_increment_bits)
    r.skip(1)  # marker
    coded = bool(r.read(1))
    rounding = r.read(1) if coded and coding_type in ("P", "S") else 0
    return VopHeader(coding_type, coded, rounding)


# H.264 slice_type mod 5 (ISO/IEC 14496-10 Table 7-6); switching slices count with their base type.
H264_SLICE_TYPES = {0: "P", 1: "B", 2: "I", 3: "P", 4: "I"}
H264_SLICE_NAL_TYPES = (1, 5)  # coded slice of a non-IDR picture, of an IDR picture


def avcc_length_size(extradata: bytes | None) -> int:
    """Bytes in each NAL unit's length prefix (MP4/MKV "avcC" extradata), or 0 for Annex B
    streams, whose NAL units follow 00 00 01 start codes (MPEG-TS, raw .h264)."""
    if extradata and len(extradata) >= 5 and extradata[0] == 1:
        return (extradata[4] & 3) + 1
    return 0


def h264_frame_type(packet: bytes, length_size: int) -> str | None:
    """ "I", "P" or "B": the slice_type of the first slice in an H.264 access unit; None without one."""
    for nal in _h264_nal_units(packet, length_size):
        if nal and nal[0] & 0x1F in H264_SLICE_NAL_TYPES:
            r = BitReader(_without_emulation_prevention(nal[1:16]))
            _read_exp_golomb(r)  # first_mb_in_slice
            return H264_SLICE_TYPES.get(_read_exp_golomb(r) % 5)
    return None


def _h264_nal_units(packet: bytes, length_size: int):
    if length_size == 0:
        starts = find_start_codes(packet, lambda code: True)  # offsets just after each NAL header
        for start, end in zip(starts, [*starts[1:], len(packet) + 4], strict=True):
            yield packet[start - 1 : end - 4]
        return
    position = 0
    while position + length_size <= len(packet):
        length = int.from_bytes(packet[position : position + length_size], "big")
        yield packet[position + length_size : position + length_size + length]
        position += length_size + length


def _without_emulation_prevention(data: bytes) -> bytes:
    """The RBSP: every 0x03 that follows two zero bytes removed (§7.4.1)."""
    return data.replace(b"\x00\x00\x03", b"\x00\x00")


def _read_exp_golomb(r: BitReader) -> int:
    """ue(v): n leading zero bits, a one, then n bits."""
    zeros = 0
    while r.read(1) == 0 and zeros < 32:
        zeros += 1
    return (1 << zeros) - 1 + r.read(zeros)

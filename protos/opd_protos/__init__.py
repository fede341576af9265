"""Hand-written helpers around opd's generated contract (`opd.teacher.v1`).

Both sides of the wire use these, so that packing, names and limits are written once:
`arrays` packs and unpacks the little-endian byte arrays of `ScoreResponse`, `names`
holds the service and health-check names, `tokenizer_files` the tokenizer digest.
"""

from opd_protos.arrays import pack_array, unpack_array
from opd_protos.names import (
    CLIENT_METADATA_KEY,
    CONTRACT_VERSION,
    LIVENESS_SERVICE,
    SERVICE_NAME,
    TOKENIZER_CHUNK_BYTES,
    grpc_message_options,
)
from opd_protos.tokenizer_files import tokenizer_digest

__all__ = [
    "CLIENT_METADATA_KEY",
    "CONTRACT_VERSION",
    "LIVENESS_SERVICE",
    "SERVICE_NAME",
    "TOKENIZER_CHUNK_BYTES",
    "grpc_message_options",
    "pack_array",
    "tokenizer_digest",
    "unpack_array",
]

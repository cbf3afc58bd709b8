// A Session's sequence saved to a file and put back, so that a restarted process (`ferry run --session`, a
// server slot, a chat) continues exactly where the saved one stopped: same tokens, same logits, bit for bit.
//
// The file (little-endian, format version kSessionFormatVersion):
//   header     magic "FERRYSES", format version, KV type name, the model's CheckpointFingerprint, tokens, layers,
//              payload bytes, snapshot_every, snapshots, snapshot bytes, and a CRC-32 of the header itself (so a
//              damaged header reads as damaged, not as another model)
//   payload    the tokens (int32 each), then per layer a record {ratio, n_compressed, window, compressed and
//              indexer-key bytes, compressor-state floats} followed by the used window-ring slots, the compressed
//              rows and indexer keys below n_compressed, and the compressors' fp32 states (main kv, score;
//              indexer kv, score) — what is in use, not the whole context's capacity
//   snapshots  the session's kept prefix-reuse snapshots (snapshots.h), oldest first: each its position (int64)
//              and its stored form (KvSnapshots::stored_bytes), so that a restored session rewinds as cheaply as
//              the saved one
//   trailer    a CRC-32 (zlib) of every byte before it
// CRC-32 rather than the fingerprint's FNV-1a: zlib's runs at several GB/s where a byte-wise FNV-1a runs under
// 1 GB/s, and a KV cache at long context is gigabytes; it catches every burst error up to 32 bits and any other
// damage with probability 1 − 2^−32.
#pragma once

#include <cstdint>
#include <filesystem>

#include "runtime/checkpoint/fingerprint.h"
#include "runtime/model/forward.h"

namespace ferry::runtime {

// 2: the snapshots. Files of version 1 (no snapshots) are refused like any other version.
inline constexpr uint32_t kSessionFormatVersion = 2;

struct SessionFileStats {
  int64_t tokens = 0;  // the sequence's length
  int64_t bytes = 0;   // the file's size
};

// Saves the sequence `session` holds (its tokens() and every layer's KV state) to `path`, for the checkpoint
// whose fingerprint is `model`, with the snapshots it keeps. Atomic: written to a temporary file beside `path`
// (session_temp_path), synced, then renamed over it, so that an error or a crash leaves whatever `path` held
// before. A crash leaves the temporary file too: the next save of `path` on this host removes those of processes
// that no longer exist. Sessions with MTP are refused for now. Under mpirun only rank 0 calls it, and the other
// ranks follow (follow_session_file). Throws ferry::Error, one line naming the file and the problem.
//
// Test hook: with FERRY_TEST_SESSION_SAVE_STALL_S=N in the environment, a save stops for N seconds after writing
// the header and tokens to the temporary file (saying so on stderr), so a test can kill the process mid-write.
SessionFileStats save_session(const Session& session, const CheckpointFingerprint& model,
                              const std::filesystem::path& path);

// The temporary file the `serial`-th save of process `pid` on this host writes before renaming it over `path`:
// "<path>.<host>.<pid>.<serial>.tmp". The host and pid tell a save whether the process that wrote one is gone.
std::filesystem::path session_temp_path(const std::filesystem::path& path, int64_t pid, int64_t serial);

// Replaces the sequence `session` holds with the one saved in `path`, and its snapshots with the saved ones when
// both take them every options().snapshot_every tokens (otherwise it has none; still exact, a rewind recomputes
// more). Checks everything before changing anything: the format and its version, the model (`model` against the
// file's fingerprint), the KV type, that the context holds the saved tokens, the file's size against its header, and
// the checksum of the whole file. Any failure throws ferry::Error (one line naming the file and the problem) with
// the session as it was. (The file is read twice, once to check it and once into the cache; should it change in
// place between the two reads, the second read's checksum fails and the session is left reset.)
SessionFileStats load_session(Session& session, const CheckpointFingerprint& model, const std::filesystem::path& path);

// Under mpirun, what a rank other than 0 runs when rank 0 announces a save (`load` false) or load of its session
// of a slot (RankExchange::announce_session_file): the file stays rank 0's, which reads and writes it as one
// process does, so a file is the same whatever ranks saved it and loads under any. A save sends rank 0 the
// layers this rank keeps (RankExchange::keeps_layer) and changes nothing here. A load receives this rank's layers
// once rank 0 has checked the whole file and every rank its layers against its cache (both agreed); a failure
// throws the same one-line error on every rank (RankExchange::agree) with every rank's session as it was — or, when
// the file changes between rank 0's two reads, every rank's session reset.
void follow_session_file(Session& session, bool load);

}  // namespace ferry::runtime

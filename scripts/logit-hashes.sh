#!/usr/bin/env bash
# Records the sha256 of the --logits-out files of a fixed set of runs (CPU with every KV type, the simulated GPU
# with every expert placement, NUMA host experts) made with the given ferry binary: run it with the binary before
# and after a change that must not move the logits, and compare the two files. The hashes belong to a machine (its
# SIMD paths), not to the repository.
# Usage: scripts/logit-hashes.sh FERRY OUTFILE
set -euo pipefail
F=$1; OUT=$2; T=$(mktemp -d)
$F make-tiny $T/tiny --seed 7 >/dev/null
$F make-tiny $T/real --seed 3 --real-ratios >/dev/null
P=$(python3 -c "print(','.join(str((i*37+11)%200) for i in range(200)))")
P2=$(python3 -c "print(','.join(str((i*53+5)%200) for i in range(700)))")
run() { local name=$1; shift; $F run "$@" --logits-out $T/$name.npy --ignore-eos >/dev/null 2>$T/$name.err || { echo "$name FAILED"; cat $T/$name.err; exit 1; }; echo "$name $(sha256sum < $T/$name.npy | cut -c1-64)"; }
{
run cpu_fp8       -m $T/tiny --tokens $P -n 16
run cpu_bf16      -m $T/tiny --tokens $P -n 16 --kv-type bf16
run cpu_q8        -m $T/tiny --tokens $P -n 16 --kv-type q8_0
run cpu_q4        -m $T/tiny --tokens $P -n 16 --kv-type q4_0 --ubatch 7
run cpu_int16     -m $T/tiny --tokens $P -n 16 --expert-activations int16
run cpu_real      -m $T/real --tokens $P2 -n 8 --ubatch 64
run sim_all       -m $T/tiny --tokens $P -n 16 --gpu sim:64MiB
run sim_cache     -m $T/tiny --tokens $P -n 16 --gpu sim:20MiB --expert-cache-slots 2
run sim_nocache   -m $T/tiny --tokens $P -n 16 --gpu sim:20MiB --expert-cache-slots 0
run sim_stream    -m $T/tiny --tokens $P -n 16 --gpu sim:10MiB --expert-cache-slots 0 --stream-min-tokens 2 --ubatch 64
run sim_cstream   -m $T/tiny --tokens $P -n 16 --gpu sim:10MiB --expert-cache-slots 3 --stream-min-tokens 2 --ubatch 64 --kv-type fp8
run sim_numa      -m $T/tiny --tokens $P -n 16 --gpu sim:20MiB --host-experts numa --numa 2 --kv-type bf16
run sim_lfu       -m $T/tiny --tokens $P -n 16 --gpu sim:20MiB --expert-cache-slots 2 --cache-policy lfu
} > $OUT
rm -rf $T

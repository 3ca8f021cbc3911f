#!/usr/bin/env bash
# Writes the starting corpus of every fuzz target into fuzz/corpus/<target>/.
#
# The corpus directory is not tracked (it grows to thousands of files), so the seeds are
# written here instead: each is a small input that gets the fuzzer past a parser's first
# refusal, which random bytes would take a long time to do. Running it again only adds files.
#
# Usage: fuzz/seed-corpus.sh   (from anywhere; guests are copied if they have been built)
set -euo pipefail

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$fuzz_dir")
corpus="$fuzz_dir/corpus"
mkdir -p "$corpus/component_validator" "$corpus/policy_parsing" "$corpus/job_records"

# --- component_validator ---------------------------------------------------------------------
# Real tasks take the loader all the way through compiling, linking and the `run` export
# check; `guest_no_run` and `guest_wrong_signature` fail the last two steps on purpose.
dir="$corpus/component_validator"
found=0
for wasm in "$root"/target/guests/wasm32-wasip2/guest/*.wasm \
    "$root"/target/wasm32-wasip2/guest/*.wasm; do
    [ -e "$wasm" ] || continue
    cp "$wasm" "$dir/"
    found=1
done
if [ "$found" = 0 ]; then
    echo "no guest components built; run" >&2
    echo "  cargo build -p example-hello --target wasm32-wasip2 --profile guest" >&2
    echo "for deeper seeds; writing the hand-made ones only" >&2
fi

# Hand-made binaries, each a few bytes, so mutations land on section parsing rather than
# inside a 100 KB file. `\0asm`, then version 0x0d 0x00 and layer 0x01 0x00 for a component
# (version 1, layer 0 for a core module).
component='\x00asm\x0d\x00\x01\x00'
module='\x00asm\x01\x00\x00\x00'
# The smallest valid component: no sections, so no `run` export (WrongWorld).
printf "$component" >"$dir/empty-component.wasm"
# A core module: refused by the header check with its own message.
printf "$module" >"$dir/empty-module.wasm"
# A component whose core-module section (id 1, 8 bytes) holds an empty module.
printf "$component"'\x01\x08'"$module" >"$dir/nested-module.wasm"
# ... and a core-instance section (id 2) instantiating it with no arguments.
printf "$component"'\x01\x08'"$module"'\x02\x04\x01\x00\x00\x00' >"$dir/nested-instance.wasm"
# A type section (id 7) with one function type taking and returning nothing.
printf "$component"'\x07\x05\x01\x40\x00\x01\x00' >"$dir/func-type.wasm"
# A custom section (id 0) named `name` with no content: the component name-section reader.
printf "$component"'\x00\x05\x04name' >"$dir/name-section.wasm"

# --- policy_parsing ----------------------------------------------------------------------------
# Each input is an 80-byte header of numbers, then the text (see fuzz_targets/policy_parsing.rs).
dir="$corpus/policy_parsing"
# Header: attempt 2, random 0.5, a transient outcome with a 5 s retry-after hint, and a raw
# policy of 5 attempts, 20% jitter, a 1 h hint ceiling, exponential from 1 s by 2 to 60 s.
# Integers are little-endian, as `arbitrary` reads them; a bool is a byte's low bit.
header=''
header+='\x02\x00\x00\x00'                     # attempt: u32 = 2
header+='\x00\x00\x00\x00\x00\x00\xe0\x3f'     # random: f64 bits of 0.5
header+='\x01'                                 # outcome kind 1: transient
header+='\x00\x00\x00\x00\x00\x00\x00\x00'     # the outcome's number (unused by transient)
header+='\x01\x88\x13\x00\x00\x00\x00\x00\x00' # retry-after hint: Some(5000 ms)
header+='\x05\x00\x00\x00'                     # raw max_attempts = 5
header+='\x14'                                 # raw jitter_percent = 20
header+='\x10\x0e\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' # hint ceiling 3600 s + 0 ns
header+='\x01'                                 # exponential
header+='\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' # base 1 s
header+='\x00\x00\x00\x00\x00\x00\x00\x40'     # factor: f64 bits of 2.0
header+='\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' # max 60 s
# The all-zero header: attempt 0 (treated as 1), outcome ok, an empty interval list.
zeros=$(printf '%.0s\\x00' $(seq 80))

seed() { # name, text: one file with the realistic header, one with the zero header
    printf "$header%s" "$2" >"$dir/$1"
    printf "$zeros%s" "$2" >"$dir/$1-zero"
}
seed intervals '10s,30s,1m'
seed intervals-prefixed 'intervals:250ms, 30s'
seed exponential-bare 'exponential'
seed exponential 'exponential:base=1s,factor=2,max=10m'
seed exponential-reordered 'exponential:factor=1.5,max=7days,base=100ms'
seed jitter '20%'
seed jitter-full '100%'
seed size-mib '64MiB'
seed size-mb '10 MB'
seed duration-compound '1h 30m 250ms'
seed duration-week '7days'
seed policy-default '{"max_attempts":3,"backoff":{"kind":"exponential","base_ms":1000,'\
'"factor":2.0,"max_ms":3600000},"jitter_percent":20,"hint_ceiling_ms":3600000}'
seed policy-intervals '{"max_attempts":1000,"backoff":{"kind":"intervals",'\
'"delays_ms":[250,30000]},"jitter_percent":0,"hint_ceiling_ms":604800000}'
seed policy-huge-factor '{"max_attempts":1000,"backoff":{"kind":"exponential","base_ms":1,'\
'"factor":1e308,"max_ms":604800000},"jitter_percent":100,"hint_ceiling_ms":0}'

# --- job_records -------------------------------------------------------------------------------
# One of each record the queue stores, in the shapes the host and the Lua scripts write.
dir="$corpus/job_records"
record() { printf '%s' "$2" >"$dir/$1"; }
record attempt-transient '{"attempt":1,"worker":"host-4242","started_at_ms":1764720000000,'\
'"ended_at_ms":1764720000250,"run_ms":12,"outcome":{"class":"transient","message":"busy",'\
'"retry_after_ms":2000,"code":"rate-limited"},"decision":"retry in 2s","log_tail":"start\n"}'
# As fetch.lua writes a lost lease: no run_ms, decision or log_tail, and a class that is not
# an `Outcome`.
record attempt-worker-lost '{"attempt":2,"worker":"host-1","started_at_ms":1764720000000,'\
'"ended_at_ms":1764720030000,"outcome":{"class":"worker_lost","message":"the worker stopped '\
'renewing its lease"}}'
record outcome-ok '{"class":"ok"}'
record outcome-permanent '{"class":"permanent","message":"bad input","code":null}'
record outcome-timed-out '{"class":"timed_out","timeout_ms":30000}'
record outcome-memory '{"class":"memory_limit","limit_bytes":67108864}'
record outcome-fuel '{"class":"fuel_exhausted","fuel":1000000}'
record outcome-trap '{"class":"trap","kind":"stack_overflow","message":"stack overflow"}'
record outcome-host '{"class":"host_error","message":"pool exhausted"}'
record outcome-aborted '{"class":"aborted","reason":"shutdown"}'
record tenant '{"name":"acme","quotas":{"max_running":4,"max_queued":1000,'\
'"max_payload_bytes":1048576,"max_component_bytes":67108864,"max_memory_bytes":268435456,'\
'"max_timeout_ms":60000,"fuel_per_attempt":null},"token_hash":'\
'"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","created_at_ms":1}'
record tenant-default '{"name":"default","quotas":{},"token_hash":null,"created_at_ms":0}'
record quotas '{"max_running":2,"fuel_per_attempt":5000000}'
record task-version '{"name":"hello","version":3,"digest":'\
'"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","size_bytes":97491,'\
'"defaults":{"policy":{"max_attempts":3,"backoff":{"kind":"exponential","base_ms":1000,'\
'"factor":2.0,"max_ms":3600000},"jitter_percent":20,"hint_ceiling_ms":3600000},'\
'"timeout_ms":30000,"memory_bytes":67108864},"uploaded_at_ms":1764720000000}'
for state in queued scheduled running succeeded failed; do
    record "state-$state" "$state"
done

for target in component_validator policy_parsing job_records; do
    echo "$target: $(find "$corpus/$target" -type f | wc -l) inputs in fuzz/corpus/$target"
done

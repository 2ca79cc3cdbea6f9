#!/usr/bin/env bash
# make test-arm: cross-builds the kernels (Sources/Kernels, the same files as the x86 build) and the C
# parallel-for for aarch64, runs the kernel checks under qemu-aarch64 with OpenMP on 2 threads, and
# checks that the conv micro-kernels' hot loops are NEON fmla. Outputs go to .build/arm/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/.build/arm
SWIFTC=${SWIFTC:-swiftc}
CC=aarch64-linux-gnu-gcc
SYSROOT=/usr/aarch64-linux-gnu
mkdir -p "$OUT"

# Embedded Swift for bare aarch64: the object follows AAPCS64 like aarch64 Linux and needs only a few
# libc symbols (posix_memalign, free, putchar, arc4random_buf) that glibc provides at link time.
SWIFT_ARM=(-target aarch64-none-none-elf -enable-experimental-feature Embedded -wmo -O -parse-as-library)

cat > "$OUT/module.modulemap" <<EOF
module CParallel { header "$ROOT/Sources/CParallel/include/cparallel.h" export * }
module ArmSupport { header "$ROOT/Tests/ARM/armsupport.h" export * }
EOF

echo "== cross-build for aarch64"
# 1. The kernels module, exactly the files SwiftPM builds for the Kernels target.
KERNELS=(Sources/Kernels/*.swift)
echo "kernels: ${KERNELS[*]##*/}"
"$SWIFTC" "${SWIFT_ARM[@]}" -module-name Kernels -I "$OUT" \
    -emit-module -emit-module-path "$OUT/Kernels.swiftmodule" \
    -c "${KERNELS[@]}" -o "$OUT/kernels-arm64.o"
# 2. The checks, a separate module that sees only the kernels' public API, with the XCTest suites'
#    shape tables.
"$SWIFTC" "${SWIFT_ARM[@]}" -module-name ArmChecks -I "$OUT" \
    -c Tests/ARM/ArmChecks.swift Tests/TestSupport/KernelShapes.swift -o "$OUT/armchecks-arm64.o"
# 3. The C parallel-for (same file and flags as the SwiftPM target), the harness, glibc and libgomp.
"$CC" -O3 -fopenmp -I Sources/CParallel/include -c Sources/CParallel/parallel.c -o "$OUT/parallel-arm64.o"
"$CC" -O3 -I Sources/CParallel/include -c Sources/CParallel/transpose.c -o "$OUT/transpose-arm64.o"
"$CC" -O2 -I Tests/ARM -c Tests/ARM/harness.c -o "$OUT/harness-arm64.o"
"$CC" -fopenmp "$OUT/harness-arm64.o" "$OUT/armchecks-arm64.o" "$OUT/kernels-arm64.o" \
    "$OUT/parallel-arm64.o" "$OUT/transpose-arm64.o" -o "$OUT/test-arm" -lm
if command -v file >/dev/null; then file "$OUT/test-arm" | sed "s|$ROOT/||; s|, BuildID[^,]*||"; fi

echo "== NEON instruction check (aarch64-linux-gnu-objdump)"
bash Tests/ARM/check_neon.sh "$OUT/kernels-arm64.o"

echo "== kernel checks under qemu-aarch64, OMP_NUM_THREADS=2 SALIENT_THREADS=2"
OMP_NUM_THREADS=2 SALIENT_THREADS=2 qemu-aarch64 -L "$SYSROOT" "$OUT/test-arm"

#!/usr/bin/env bash
# Instruction check of the conv micro-kernels in the aarch64 kernels object:
#   check_neon.sh kernels-arm64.o
# For each micro-kernel (convTapLoop: forward and backward-data; bwdWeightTile: backward-weights) it
# disassembles the function and finds its loops (a branch back to an earlier address in the function:
# the body is [target, branch]). The hot loop is the tightest loop that does vector FMAs; it must
#   - do at least 24 `fmla vN.4s` per iteration (the 6 x 16 register tile: 12 FVec FMAs, each two
#     NEON q registers wide),
#   - not touch the stack (`[sp`: an accumulator spilled out of the 32 NEON registers),
# and no loop with an fmla in it may call anything (`bl`, `blr`: e.g. a libm fmaf) or do a scalar
# fused multiply-add (`fmadd`/`fmsub`/`fnmadd`/`fnmsub`, `fmla` on an `sN`). The function must also be
# called (`bl`) somewhere in the object, so that the checked copy is the code that runs.
set -euo pipefail
OBJ=${1:?usage: check_neon.sh kernels-arm64.o}
OBJDUMP=${OBJDUMP:-aarch64-linux-gnu-objdump}
MIN_FMLA=24
KERNELS="convTapLoop bwdWeightTile"

dis=$(mktemp); trap 'rm -f "$dis"' EXIT
"$OBJDUMP" -d --no-show-raw-insn "$OBJ" > "$dis"

fail=0
for k in $KERNELS; do
    # Mangled names contain the identifier after its length (e.g. $e7Kernels11convTapLoop...); take each
    # match of exactly that identifier (13bwdWeightTile, not 20bwdWeightTileStrided).
    syms=$(grep -E "^[0-9a-f]+ <[^>]*[^0-9]${#k}${k}[^>]*>:$" "$dis" | sed -E 's/^[0-9a-f]+ <(.*)>:$/\1/' || true)
    if [ -z "$syms" ]; then
        echo "FAIL $k: no such symbol in $OBJ (inlined or renamed? point this check at the function that holds its loop)"
        fail=1; continue
    fi
    while IFS= read -r sym; do
        # The checked code must be the code that runs: the out-of-line copy is called (not inlined away).
        calls=$(grep -F "	bl	" "$dis" | grep -cF "<$sym>" || true)
        if [ "$calls" -eq 0 ]; then
            echo "FAIL $k: $sym is never called (inlined into its callers?): point this check at the caller's loop"
            fail=1; continue
        fi
        awk -v sym="$sym" -v k="$k" -v minf="$MIN_FMLA" -v calls="$calls" '
        function hex(s,   i, c, v) { v = 0; s = tolower(s)
            for (i = 1; i <= length(s); i++) { c = index("0123456789abcdef", substr(s, i, 1)) - 1; v = v * 16 + c }
            return v }
        $0 == sprintf("%s <%s>:", $1, sym) { inside = 1; next }
        inside && /^$/ { inside = 0 }
        inside && /^ *[0-9a-f]+:/ {
            split($0, parts, "\t"); a = parts[1]; sub(/^ */, "", a); sub(/:$/, "", a)
            n++; addr[n] = hex(a); ins[n] = parts[2] " " parts[3]; op[n] = parts[2]
        }
        END {
            if (n == 0) { printf "FAIL %s: empty disassembly\n", sym; exit 1 }
            bad = 0; loops = 0; hot = 0; cold = 0
            for (i = 1; i <= n; i++) {
                if (op[i] !~ /^(b|b\.[a-z]+|cbz|cbnz|tbz|tbnz)$/) continue
                if (!match(ins[i], /[0-9a-f]+ </)) continue
                t = hex(substr(ins[i], RSTART, RLENGTH - 2))
                if (t >= addr[i] || t < addr[1]) continue
                f = 0; why = ""; stack = ""; len = 0
                for (j = 1; j <= i; j++) {
                    if (addr[j] < t) continue
                    len++
                    if (ins[j] ~ /^fmla[ \t]+v[0-9]+\.4s/) f++
                    if (op[j] ~ /^(bl|blr)$/) why = why " call(" ins[j] ")"
                    if (op[j] ~ /^f(n?madd|n?msub)$/ || ins[j] ~ /^fmla[ \t]+s[0-9]/) why = why " scalar-fma(" ins[j] ")"
                    if (ins[j] ~ /\[sp/) stack = stack " (" ins[j] ")"
                }
                if (f == 0) continue
                loops++
                if (why != "") { bad = 1; printf "FAIL %s: loop %x..%x has%s\n", k, t, addr[i], why }
                if (stack != "") cold++
                if (hot == 0 || len < hlen) { hot = 1; hlen = len; hf = f; ht = t; hb = addr[i]; hs = stack }
            }
            if (hot == 0) { printf "FAIL %s: no loop with fmla v.4s\n", k; exit 1 }
            if (hf < minf) { printf "FAIL %s: hot loop %x..%x has %d fmla v.4s, want >= %d\n", k, ht, hb, hf, minf; bad = 1 }
            if (hs != "") { printf "FAIL %s: hot loop %x..%x spills to the stack:%s\n", k, ht, hb, hs; bad = 1 }
            if (bad) exit 1
            printf "ok   %-14s (called from %d sites) hot loop %x..%x: %d instructions, %d x fmla v.4s, no spills; %d fmla loop(s): no calls, no scalar fma", k, calls, ht, hb, hlen, hf, loops
            if (cold) printf " (%d wider ones, around the partial-tile edge path, touch the stack)", cold
            printf "\n"
        }' "$dis" || fail=1
    done <<< "$syms"
done
exit $fail

// Runs the Swift kernel checks (ArmChecks.swift, cross-compiled with Embedded Swift) on aarch64 and
// exits non-zero on any mismatch. Built and run by Tests/ARM/run.sh (`make test-arm`).
#include <stdio.h>
#include "armsupport.h"

long salient_arm_checks(void);   // @_cdecl in ArmChecks.swift: returns the number of failed checks

void salient_arm_report(const char *kernel, const char *shape, int threads, double worst, int ok) {
    printf("%-4s %-30s %-46s threads=%d  err/tol=%.3g\n", ok ? "ok" : "FAIL", kernel, shape, threads, worst);
    fflush(stdout);
}

void salient_arm_note(const char *text) { printf("%s\n", text); fflush(stdout); }

int main(void) {
    long failures = salient_arm_checks();
    return failures ? 1 : 0;
}

// C side of the aarch64 kernel checks (Tests/ARM): the Swift checks print through this so that lines
// are formatted (printf) and flushed from one place. Implemented in harness.c.
#ifndef SALIENT_ARMSUPPORT_H
#define SALIENT_ARMSUPPORT_H

/// One line per check: kernel, shape, threads, worst |fast - naive| / (atol + rtol * |naive|), verdict.
void salient_arm_report(const char *kernel, const char *shape, int threads, double worst, int ok);
/// A free-form line.
void salient_arm_note(const char *text);

#endif

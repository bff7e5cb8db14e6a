/* The slice on a Cortex-M under QEMU (ddnn/ops/mcu/run.py): frames in from a host file by
   semihosting, per frame the scores and feature bits out to another, then one line of
   figures. Instructions are counted by SysTick under `-icount shift=0`, calibrated against a
   loop of known length; stack use by painting the stack below the stack pointer and finding
   the deepest word the slice overwrote. FRAMES_FILE and RESULTS_FILE come from -D. */
#include <stdint.h>
#include <stdio.h>

#include "ddnn_slice.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define PAINT 0xC5C5C5C5u
#define PAINT_WORDS 2048 /* 8 KB below main's frame: far more than the slice may use */
#define CALIBRATION_LOOPS 100000u /* two instructions each: subs, bne */

static uint8_t frame[DDNN_SLICE_PIXELS];
static float scores[DDNN_SLICE_CLASSES];
static uint8_t bits[DDNN_SLICE_FEATURE_BYTES];

static uint32_t ticks_since(uint32_t start)
{
    return (start - SYST_CVR) & 0xFFFFFFu; /* SysTick counts down, 24 bits */
}

static uint32_t calibrate(void)
{
    uint32_t n = CALIBRATION_LOOPS, start = SYST_CVR;
    __asm__ volatile("1: subs %0, %0, #1\n bne 1b\n" : "+r"(n));
    return ticks_since(start);
}

/* Paints the stack below the stack pointer, runs one frame, and returns how many bytes below
   it the slice wrote: its stack use, the call included. */
__attribute__((noinline)) static uint32_t run_measured(uint32_t *ticks)
{
    volatile uint32_t *sp; /* volatile: a memset would paint over its own return address */
    uint32_t i, start, used = 0;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (i = 1; i <= PAINT_WORDS; i++)
        sp[-(int32_t)i] = PAINT;
    start = SYST_CVR;
    ddnn_device_run(frame, scores, bits);
    *ticks = ticks_since(start);
    for (i = PAINT_WORDS; i > 0; i--)
        if (sp[-(int32_t)i] != PAINT) {
            used = i * 4;
            break;
        }
    return used;
}

int main(void)
{
    FILE *in = fopen(FRAMES_FILE, "rb"), *out = fopen(RESULTS_FILE, "wb");
    uint32_t frames = 0, ticks, total = 0, most = 0, stack = 0, calibration;
    if (in == NULL || out == NULL) {
        printf("error: cannot open the frames or results file\n");
        return 1;
    }
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5; /* enabled, on the processor clock, no interrupt */
    calibration = calibrate();
    while (fread(frame, 1, sizeof frame, in) == sizeof frame) {
        uint32_t used = run_measured(&ticks);
        stack = used > stack ? used : stack;
        total += ticks;
        most = ticks > most ? ticks : most;
        fwrite(scores, sizeof scores, 1, out);
        fwrite(bits, sizeof bits, 1, out);
        frames++;
    }
    fclose(in);
    fclose(out);
    printf("frames=%lu ticks=%lu most=%lu calibration=%lu loops=%lu stack=%lu\n",
           (unsigned long)frames, (unsigned long)total, (unsigned long)most,
           (unsigned long)calibration, (unsigned long)CALIBRATION_LOOPS, (unsigned long)stack);
    return 0;
}

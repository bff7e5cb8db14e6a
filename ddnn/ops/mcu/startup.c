/* The least a Cortex-M needs to reach main under QEMU: a vector table whose first words are
   the stack top and the reset handler, which copies the initialized variables from flash to
   RAM and hands over to newlib's _start (it clears .bss, opens semihosting, calls main). */
#include <stdint.h>

extern uint32_t __data_start__, __data_end__, __data_load__, __stack_top__;
extern void _start(void);

void reset_handler(void)
{
    uint32_t *from = &__data_load__, *to = &__data_start__;
    while (to < &__data_end__)
        *to++ = *from++;
    _start();
    for (;;) {
    }
}

static void halt(void)
{
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&__stack_top__, reset_handler, halt, halt, halt, halt, halt, 0, 0, 0, 0,
    halt, halt, 0, halt, halt,
};

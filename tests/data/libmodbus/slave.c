/* A Modbus RTU slave built on libmodbus (not pymodbus), for tests/test_libmodbus_real.py.
 *
 * usage: slave PORT UNIT [REFUSE_S]
 * Serves unit UNIT at 9600 8N1 on PORT in libmodbus's usual server loop (modbus_receive, then
 * modbus_reply), so it reads the line as every libmodbus RTU slave does: after a request for
 * another unit it takes the next frame for that unit's reply. Holding and input registers
 * 0-99 hold 1000 + address and 2000 + address, but holding 16-21 hold the text
 * "LMB-000037" (a water meter's serial number); coils and discrete inputs 0-15.
 * With REFUSE_S it answers exception 2 (illegal data address) to every request for its first
 * REFUSE_S seconds, as a meter does while it boots.
 * Prints "served N" on stderr after each request it answered. */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s PORT UNIT [REFUSE_S]\n", argv[0]);
        return 2;
    }
    modbus_t *ctx = modbus_new_rtu(argv[1], 9600, 'N', 8, 1);
    if (ctx == NULL || modbus_set_slave(ctx, atoi(argv[2])) == -1 || modbus_connect(ctx) == -1) {
        fprintf(stderr, "cannot serve %s: %s\n", argv[1], modbus_strerror(errno));
        return 1;
    }
    modbus_mapping_t *map = modbus_mapping_new(16, 16, 100, 100);
    for (int i = 0; i < 100; i++) {
        map->tab_registers[i] = 1000 + i;
        map->tab_input_registers[i] = 2000 + i;
    }
    const char *serial = "LMB-000037\0\0";
    for (int i = 0; i < 6; i++) {
        map->tab_registers[16 + i] = (uint16_t)(serial[2 * i] << 8 | serial[2 * i + 1]);
    }
    double refuse_s = argc == 4 ? atof(argv[3]) : 0.0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint8_t query[MODBUS_RTU_MAX_ADU_LENGTH];
    long served = 0;
    for (;;) {
        int rc = modbus_receive(ctx, query);
        if (rc <= 0) {
            continue;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        double up = (now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9;
        if (up < refuse_s) {
            modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS);
            fprintf(stderr, "refused at %.3f s\n", up);
        } else if (modbus_reply(ctx, query, rc, map) > 0) {
            fprintf(stderr, "served %ld at %.3f s\n", ++served, up);
        }
    }
}

/* mpicloud demo: every rank adds rank+1; the sum n(n+1)/2 proves all ranks took part. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int rank, size, len;
    char host[MPI_MAX_PROCESSOR_NAME];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
    const char *node = getenv("MPICLOUD_NODE");
    printf("rank %d of %d on %s (MPICLOUD_NODE=%s)\n", rank, size, host, node ? node : "?");
    fflush(stdout);
    long mine = rank + 1, sum = 0;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        long expected = (long)size * (size + 1) / 2;
        FILE *out = fopen("result.txt", "w");
        fprintf(out, "ranks=%d sum=%ld expected=%ld %s\n", size, sum, expected, sum == expected ? "OK" : "MISMATCH");
        fclose(out);
        printf("allreduce sum=%ld expected=%ld\n", sum, expected);
    }
    MPI_Finalize();
    return 0;
}

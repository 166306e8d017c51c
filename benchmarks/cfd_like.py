"""Write CFD-like outputs (VTK-style ASCII points, cells, fields with one noisy field, a solver log).

Usage: python cfd_like.py OUTDIR N   (about N*N*20 points; N=200 gives about 100 MB)"""

import math
import os
import random
import sys

out = sys.argv[1]
n = int(sys.argv[2])
random.seed(5)
os.makedirs(out, exist_ok=True)
nx = ny = n
nz = 20
with open(f"{out}/points.vtk", "w") as f:
    f.write("POINTS\n")
    for k in range(nz):
        for j in range(ny):
            f.write("".join(f"{i*0.01:.5f} {j*0.01:.5f} {k*0.05:.5f}\n" for i in range(nx)))
with open(f"{out}/cells.vtk", "w") as f:
    f.write("CELLS\n")
    for k in range(nz - 1):
        for j in range(ny - 1):
            b = k * nx * ny + j * nx
            f.write("".join(f"8 {b+i} {b+i+1} {b+i+nx+1} {b+i+nx} {b+i+nx*ny} {b+i+nx*ny+1} "
                            f"{b+i+nx*ny+nx+1} {b+i+nx*ny+nx}\n" for i in range(nx - 1)))
fields = (("p", lambda x, y, z: 101325 + 50 * math.sin(x) * math.cos(y)), ("T", lambda x, y, z: 300 + 2 * z),
          ("k", lambda x, y, z: 0.01 + random.gauss(0, 1e-4)))
for name, fn in fields:
    with open(f"{out}/{name}.vtk", "w") as f:
        f.write(f"SCALARS {name} float\n")
        for k in range(nz):
            for j in range(ny):
                f.write("".join(f"{fn(i*0.01, j*0.01, k*0.05):.4f}\n" for i in range(nx)))
with open(f"{out}/solver.log", "w") as f:
    for it in range(200000):
        f.write(f"Time = {it*1e-4:.4f}\nsmoothSolver: Solving for Ux, Initial residual = {1/(it+1):.6e}, "
                f"Final residual = {1e-6/(it+1):.6e}, No Iterations 2\n")

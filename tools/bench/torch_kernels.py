#!/usr/bin/env python3
"""PyTorch side of the kernel micro-benchmarks: conv2d 3x3 at the UNet and VAE shapes, and
group norm + SiLU, 2 threads, median of 5 (docs/benchmarks.md, the bracketed figures).

    /path/to/venv/bin/python tools/bench/torch_kernels.py
"""
import torch, time
torch.set_num_threads(2)
for c,s in [(320,64),(640,32),(1280,16),(1280,8),(512,32),(512,64),(512,128),(256,256),(128,512),(256,128),(128,256)]:
    x=torch.randn(1,c,s,s); w=torch.randn(c,c,3,3); b=torch.randn(c)
    f=lambda: torch.nn.functional.conv2d(x,w,b,padding=1)
    for _ in range(2): f()
    t=[]
    for _ in range(5):
        st=time.perf_counter(); f(); t.append(time.perf_counter()-st)
    t.sort(); fl=18*c*c*s*s
    print("conv %d@%d: %.2f ms %.0f GFLOP/s"%(c,s,t[2]*1e3,fl/t[2]/1e9))
x=torch.randn(1,512,64,64)
gn=torch.nn.GroupNorm(32,512)
t=[]
for _ in range(7):
    st=time.perf_counter(); torch.nn.functional.silu(gn(x)); t.append(time.perf_counter()-st)
t.sort(); print("gn+silu 512@64: %.2f ms"%(t[3]*1e3))

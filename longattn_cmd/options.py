"""What the ``longattn`` commands offer, as plain data that the command line's help can quote without
importing torch, transformers or the library."""

# `longattn benchmark` with no choice of lengths or candidates: one variant per mechanism and the references,
# short timing, a few minutes on 2 CPU cores. FULL_COMMAND is the whole sweep it stands for.
QUICK = dict(
    lengths=[1024, 2048, 4096],
    attention="softmax-sdpa,nystrom,lsg-norm,yoso-lsh-ebwd",
    reference=True,
    repeats=2,
    min_time=0.0,
    time_budget=10.0,
)
FULL_COMMAND = "longattn benchmark --attention all --reference --lengths 512,1024,2048,4096,8192,16384"

"""What a subnet costs: FLOPs and latency, counted or looked up (no TF but
the measurement).

    flops                  FLOPs and parameters of a subnet, from the plan
    latency                the project's latency tables: predictor and file format
    latency_measurement    building a latency table by timing blocks here (TF)
    reference_tables       the reference's .pkl latency tables (the paper's targets)
"""

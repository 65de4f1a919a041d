"""gRPC servicers: one per vision.v1 service, translating proto ⇄ domain and nothing else."""

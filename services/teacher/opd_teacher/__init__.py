"""opd's teacher scoring service: one teacher model behind gRPC, shared by many student jobs.

The work happens in one engine interface (`engine.base.ScoringEngine`) over validated
token-id jobs; the batcher sits between the transports and the engine; the gRPC servicer
only converts between the contract and these domain types.
"""

"""Control: the seed's controller, learning-rate policies, stresses, guards and snapshots."""

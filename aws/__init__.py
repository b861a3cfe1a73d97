"""medimg on AWS: `python -m aws up|status|down|cost` provisions, lists, removes and prices a GPU training stack."""

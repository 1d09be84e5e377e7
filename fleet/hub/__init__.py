"""The model hub: pinned model versions, the content store, upstream sync, and the /hf mirror."""

"""The request path: types, routing, scheduling, model lifecycle, model store, events."""

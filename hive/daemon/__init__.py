"""The Hive daemon: lifecycle, socket server, dispatch, state, events."""

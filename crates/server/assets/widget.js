// Tollgate's browser widgets: filled in by the widget work of issue 15.

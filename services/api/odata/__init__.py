"""OData v4 feed for BI tools (Tableau, Power BI, Excel) at /odata/: $metadata, entity sets,
$select/$filter/$orderby/$top/$skip/$count and server-driven paging, pushed down to SQL."""

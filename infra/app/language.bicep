// Azure AI Language for redaction at capture (README "Redaction"): PII detection, reached with the app's
// identity only (local auth off; a custom subdomain is what Entra ID sign-in needs).
param name string
param location string
param tags object

resource language 'Microsoft.CognitiveServices/accounts@2024-10-01' = {
  // checkov:skip=CKV_AZURE_134:The app reaches it over the public endpoint like its other services; add a private endpoint with the app's VNet integration if needed.
  // checkov:skip=CKV2_AZURE_22:Texts are analysed in memory and not stored by the service (loggingOptOut), so there is no data at rest to encrypt with a customer key.
  name: name
  location: location
  tags: tags
  kind: 'TextAnalytics'
  sku: { name: 'S' }
  identity: { type: 'SystemAssigned' }
  properties: {
    customSubDomainName: name
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

output name string = language.name
output endpoint string = language.properties.endpoint

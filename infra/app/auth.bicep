// Entra ID in front of the app (App Service Authentication, deployed only with enableEntraAuth):
// callers need a token for clientId; App Service validates it, strips any forged
// X-MS-CLIENT-PRINCIPAL header and passes the signed-in principal to the app.
// Its own module, not a conditional resource in api.bicep: checkov's CKV_AZURE_70 crashes with a
// traceback on a conditional sites/config (it expects `properties` at the top), and here it checks
// requireHttps for real.
param siteName string
param clientId string
param tenantId string

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: siteName
}

resource auth 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov reads this sites/config child as a site's 'web' config; those checks do not apply here:
  // checkov:skip=CKV_AZURE_63:App Service HTTP logs: Application Insights records every request instead.
  // checkov:skip=CKV_AZURE_65:Detailed IIS error pages: not a Linux Functions feature; exceptions go to Application Insights.
  // checkov:skip=CKV_AZURE_66:IIS failed request tracing: same as CKV_AZURE_65.
  // checkov:skip=CKV_AZURE_80:.NET Framework version: a Python app.
  // checkov:skip=CKV_AZURE_88:Azure Files content share: Flex Consumption deploys from the blob container instead.
  // checkov:skip=CKV_AZURE_222:Public network access is set on the site (see its skip in api.bicep).
  // checkov:skip=CKV_AZURE_13:This is the authentication; checkov reads only the older authsettings shape.
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: { enabled: true }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      // No data behind these: the pane's page and files (it then offers a sign-in link to
      // /.auth/login/aad instead of showing a bare 401) and the health probe.
      excludedPaths: ['/', '/pane/*', '/api/health']
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: clientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: ['api://${clientId}', clientId]
        }
      }
    }
    login: {
      tokenStore: { enabled: false }
    }
  }
}
